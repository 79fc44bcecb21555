"""A stand-in for django-debug-toolbar, used only when the real package is not installed.

tests/conftest.py puts this folder at the end of sys.path when ``import debug_toolbar`` would
fail, so the dev-only import tests run (and prove something) in environments without the
toolbar; with ``pip install django-debug-toolbar`` the real package is found first.
"""
