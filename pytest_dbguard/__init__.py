"""pytest-dbguard: correct, isolated and fast database-backed test suites.

Activate it with ``pytest -p pytest_dbguard`` or ``pytest_plugins = ["pytest_dbguard"]`` in the
root conftest. Importing this package imports neither SQLAlchemy nor a driver; the hooks live in
``pytest_dbguard.plugin``, registered through ``pytest_plugins`` below.
"""

from __future__ import annotations

__version__ = "0.1.0"

# pytest registers these when this module is loaded as a plugin; a plain import does nothing.
pytest_plugins = ["pytest_dbguard.plugin"]
