"""``python -m pytest_dbguard``: the ``dbguard`` command line."""

from __future__ import annotations

from pytest_dbguard.cli import main

raise SystemExit(main())
