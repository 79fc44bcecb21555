"""xdist workers that do not inherit the controller's environment (``--tx ssh=…``, ``socket=…``)
still join its run: the controller hands them its decisions before pytest starts in them.

A ``popen`` worker is the controller's child and inherits ``ORIGIN_VAR`` with the rest of the
environment. An ssh or socket worker starts from a login shell or a server process that never
saw it: it would make a run of its own (its own embedded cluster, its own names, the controller's
schema and templates unknown to it). ``pytest_configure_node`` runs on the controller before xdist
starts pytest in the worker, over the same execnet gateway: the origin goes through it into the
worker's ``os.environ``, and ``run_plan.inherited_origin`` finds it there as a popen worker does.
"""

from __future__ import annotations

import os
from typing import Any, Final

import pytest

from pytest_dbguard.compat import xdist_loaded
from pytest_dbguard.run.run_plan import ORIGIN_VAR

REGISTERED_NAME: Final = "dbguard-remote-workers"
HANDOVER_SECONDS: Final = 30.0

# Runs in the worker process. ``pid`` is the parent of the process a worker's pytest recognises
# its origin by (``inherited_origin``): a nested pytest started inside a test is not one.
_RECEIVE_ORIGIN: Final = f"""
import json, os
origin = json.loads(channel.receive())
origin["pid"] = os.getppid()
os.environ[{ORIGIN_VAR!r}] = json.dumps(origin)
channel.send("ok")
"""


class OriginCourier:
    """xdist controller hook: give a worker that is not a local child the run's origin."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        origin = os.environ.get(ORIGIN_VAR)
        if not origin or node.gateway.spec.popen:
            return  # no run to join (SQLite, an inactive plugin), or a child that inherits it
        channel = node.gateway.remote_exec(_RECEIVE_ORIGIN)
        channel.send(origin)
        channel.receive(timeout=HANDOVER_SECONDS)
        channel.waitclose(timeout=HANDOVER_SECONDS)


def register(config: pytest.Config) -> None:
    """Register the controller hook when xdist is loaded and this process is its controller."""
    manager = config.pluginmanager
    if hasattr(config, "workerinput") or not xdist_loaded(config):
        return
    if not manager.hasplugin(REGISTERED_NAME):
        manager.register(OriginCourier(), REGISTERED_NAME)
