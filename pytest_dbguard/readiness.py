"""The readiness check's public names under the import path earlier releases documented;
``from pytest_dbguard import await_ready`` is the spelling to use now."""

from __future__ import annotations

from pytest_dbguard.server.readiness import *  # noqa: F403 (its __all__: the public names)
from pytest_dbguard.server.readiness import __all__ as __all__
