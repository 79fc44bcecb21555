"""Settings split by environment: base (shared), development, production, test.

Choose one with DJANGO_SETTINGS_MODULE (the tests use config.settings.test, set in pytest.ini).
"""
