"""pytest wiring: options, ini keys, markers, validation, the header, and the concern modules.

No SQL and no fixture bodies here: each hook hands over to the module that owns the concern.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Generator
from typing import NoReturn

import pytest

from pytest_dbguard.config_errors import DbguardError
from pytest_dbguard.run import environment, options
from pytest_dbguard.run.state import run_of

# The modules that hold fixtures (registered by every run that collects, so that --fixtures
# lists them: they import little; not by --help or --markers) and the modules whose hooks only
# a run that runs tests registers. What such a run uses is imported by it, in the hooks below
# or by those modules: ``--help``, ``--collect-only``, ``--fixtures`` and the other commands
# that only show something import the settings, the environment and the fixtures' thin
# modules, nothing that starts, connects or guards (benchmarks/ci_path.py, 4 and c).
# Registered by the hooks below, not listed in ``pytest_plugins``: pytest looks every name of
# that list up among all installed packages' entry points first, one scan of their metadata per
# name (benchmarks/ci_path.py, p), and marks it for assertion rewriting, which it cannot do to
# a module already imported (``pytest_dbguard._stop_rewriting_asserts``).
FIXTURE_PLUGINS = (
    "pytest_dbguard.db.fixtures",
    "pytest_dbguard.db.isolation",
    "pytest_dbguard.guards.fixtures",
    "pytest_dbguard.faults.fixtures",
)
RUN_PLUGINS = (
    "pytest_dbguard.run.phases",
    "pytest_dbguard.run.failed_tests",
    "pytest_dbguard.run.report",
)
# Written here, not next to their signatures (``run.markers``): ``--markers`` and ``--help`` then
# import no module for them, ~0.6M instructions (benchmarks/ci_path.py, c).
MARKERS = (
    "dbguard(isolation='rollback'|'truncate'|'none', allow=['name or URL', ...]): how this test "
    "is isolated (default: ini dbguard_isolation; truncate for code that commits on its own "
    "connections) and which other databases it may connect to.",
    "dbguard_without('module', ...): inside this test the modules (and their submodules) cannot be "
    "imported, as if not installed; proves that code runs without dev-only packages.",
)
SESSION_HOOKS_PLUGIN = "dbguard-session-hooks"
PACKAGE = "pytest_dbguard"


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def _register(manager: pytest.PytestPluginManager, names: tuple[str, ...]) -> None:
    for name in names:
        if not manager.is_blocked(name):  # -p no:NAME: not even imported
            manager.register(importlib.import_module(name), name)


def registered(manager: pytest.PytestPluginManager) -> None:
    """Called by the package right after it registers this module: the earliest moment dbguard
    exists. With conftest opt-in (pytest_plugins) this is while the conftests load, after the
    early hook below would have run: prepare now, so the conftests loaded after this one see the
    test environment, and check the guarded modules. A function, not a ``pytest_plugin_registered``
    hook, which pytest would call for every plugin of every run, ``--help`` included (0.7M
    instructions of ``--markers``, benchmarks/ci_path.py, c)."""
    if not _registered_by_a_conftest(manager):
        return  # with -p, the early hook below does it once every -p plugin is imported
    config = manager.get_plugin("pytestconfig")
    if config is None or run_of(config) is not None:
        return
    try:
        namespace, args = environment.command_line(config)
        environment.prepare(config, namespace, args, late=True)
    except DbguardError as error:
        raise pytest.UsageError(str(error)) from None


def _registered_by_a_conftest(manager: pytest.PytestPluginManager) -> bool:
    return any(
        os.path.basename(getattr(plugin, "__file__", None) or "") == "conftest.py"
        for plugin in manager.get_plugins()
    )


# A wrapper runs before every plain implementation, including pytest-env's tryfirst one and
# the conftest loading itself: the test environment must be in place before either.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, None, None]:
    if early_config.pluginmanager.is_blocked(PACKAGE):
        # -p no:pytest_dbguard after an addopts' -p pytest_dbguard: pytest unregistered the
        # package, not this module that the package registered. Off, as for any plugin.
        early_config.pluginmanager.unregister(sys.modules[__name__])
        return (yield)
    try:
        environment.prepare(early_config, early_config.known_args_namespace, args)
    except DbguardError as error:
        raise pytest.UsageError(str(error)) from None
    except KeyboardInterrupt as interrupt:
        _interrupted_before_the_session(early_config, interrupt)
    # Read before pytest-django sets it from --ds or its ini: where the settings came from, should
    # they fail to load. Django's modules are imported only then (not by --help, not on success).
    django_loaded, settings_env = _django_loaded(), os.environ.get(environment.DJANGO_SETTINGS_ENV)
    try:
        return (yield)
    except KeyboardInterrupt as interrupt:
        _interrupted_before_the_session(early_config, interrupt)
    except Exception as error:  # a conftest's, or pytest-django's for settings or Django
        from pytest_dbguard.run import conftest_failures

        too_early = conftest_failures.connected_at_import(early_config, error)
        if too_early is not None:  # the xdist controller imports the conftests first: once
            raise pytest.UsageError(too_early) from None
        if not django_loaded:
            raise
        from pytest_dbguard.django import activation as django_activation

        explained = django_activation.startup_failure(early_config, error, settings_env)
        if explained is None:
            raise
        raise pytest.UsageError(str(explained)) from None


def _interrupted_before_the_session(
    config: pytest.Config, interrupt: KeyboardInterrupt
) -> NoReturn:
    # pytest reports an interrupt only once its session has begun; before, a traceback.
    from pytest_dbguard.run import termination

    termination.exit_before_the_session(config, interrupt)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    try:
        # Conftest opt-in registers the plugin after the early hook: prepare now and check guards.
        environment.prepare(config, config.option, config.args, late=True)
        if _runs_tests(config):
            from pytest_dbguard.faults import restart_fence
            from pytest_dbguard.run import lifecycle

            lifecycle.configure(config)
            _register(config.pluginmanager, RUN_PLUGINS)
            restart_fence.register(config)
        else:
            environment.configure_inspection(config)
        if not _collects(config):
            return  # --help, --markers: no fixture, test or report to show
        from pytest_dbguard.aio import asyncloop
        from pytest_dbguard.db import fixtures as db_fixtures
        from pytest_dbguard.run import redaction

        redaction.register(config)

        _register(config.pluginmanager, FIXTURE_PLUGINS)
        config.pluginmanager.register(SessionHooks(config), SESSION_HOOKS_PLUGIN)
        config.pluginmanager.register(
            db_fixtures.run_fixtures(config), db_fixtures.RUN_FIXTURES_PLUGIN
        )
        asyncloop.register(config)
    except DbguardError as error:
        raise pytest.UsageError(str(error)) from None


def _collects(config: pytest.Config) -> bool:
    """Not ``--help``, ``--version`` or ``--markers``: the run collects tests (to run them, list
    them or show their fixtures), so the fixtures must be there."""
    run = run_of(config)
    return run is not None and run.plan.inspection not in environment.NOT_COLLECTING


def _runs_tests(config: pytest.Config) -> bool:
    """Not a command that only shows something (``--help``, ``--collect-only``...): such a one
    starts nothing, connects to nothing and imports none of it."""
    run = run_of(config)
    return run is not None and run.plan.inspection is None


# Last: a project without a settings module calls settings.configure() in its conftest's
# pytest_configure (pytest-django's documented way), which runs after the tryfirst hook above.
@pytest.hookimpl(trylast=True, specname="pytest_configure")
def pytest_configure_django(config: pytest.Config) -> None:
    if not _django_loaded() and not config.getini("dbguard_django_databases"):
        return  # no Django in this run, and no setting that says there should be
    if not _collects(config):
        return  # --help, --markers, --version: no fixture or database to point anywhere
    from pytest_dbguard.django import activation as django_activation

    try:
        django_activation.register(config)  # only when pytest-django runs with settings
    except DbguardError as error:
        raise pytest.UsageError(str(error)) from None


def _django_loaded() -> bool:
    """pytest-django's plugin module is loaded (``django.activation`` tells whether it runs)."""
    return "pytest_django.plugin" in sys.modules


class SessionHooks:
    """The hooks of a run that collects (to run its tests, list them or show their fixtures).

    Registered by ``pytest_configure``, not at import: ``--help``, ``--markers`` and ``--version``
    would pay pluggy's reading of each hook's signature for nothing, ~1.2M instructions
    (benchmarks/ci_path.py, c). Registered before the conftests' own ``pytest_configure``.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    # Last: after pytest's INTERNALERROR lines, where a reader looks first.
    @pytest.hookimpl(trylast=True)
    def pytest_internalerror(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        from pytest_dbguard.run import conftest_failures

        explained = conftest_failures.connected_while_configuring(self.config, excinfo.value)
        if explained is not None:
            print(f"dbguard: {explained}", file=sys.stderr)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if _runs_tests(session.config):
            from pytest_dbguard.run import lifecycle, summary_line

            lifecycle.start(session.config)
            summary_line.register_for_controller(session.config)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        from pytest_dbguard.aio import asyncloop

        return asyncloop.header_lines(config)

    # Wait for the server after collection, not before: it starts while pytest collects. Before the
    # terminal reporter's own hook, which prints the line below.
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if _runs_tests(session.config):
            from pytest_dbguard.run import lifecycle

            lifecycle.ensure_started(session.config)

    def pytest_report_collectionfinish(self, config: pytest.Config) -> list[str]:
        if not _runs_tests(config):
            return []
        from pytest_dbguard.run import summary_line

        return summary_line.after_collection(config)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if _runs_tests(session.config):
            from pytest_dbguard.run import lifecycle

            if lifecycle.start_controller(session.config):
                from pytest_dbguard.run import early_template

                early_template.start(session.config)  # Django's template, while the workers start
            # When collection was skipped or its hook not reached.
            lifecycle.ensure_started(session.config)

    # Last: another plugin's collection hook may still add markers.
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        from pytest_dbguard.db import isolation

        isolation.read_collected(config, items)
        if _runs_tests(config):
            isolation.add_truncate_fixture(config, items)

    # Last: it drops the worker's database, which a conftest's or another plugin's own
    # sessionfinish may still use (registered after them, a plain hook would run before them).
    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if _runs_tests(session.config):
            from pytest_dbguard.run import lifecycle

            lifecycle.finish(session.config)

    # Before pytest's own explanation, which would show a string's text with its password.
    @pytest.hookimpl(tryfirst=True)
    def pytest_assertrepr_compare(
        self, config: pytest.Config, op: str, left: object, right: object
    ) -> list[str] | None:
        from pytest_dbguard.run import redaction

        return redaction.explain(config, op, left, right)

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self,
        collector: pytest.Collector,
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        report = yield
        from pytest_dbguard.run import redaction

        redaction.scrub_report(collector.config, report)
        return report


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _runs_tests(config):
        from pytest_dbguard.run import lifecycle

        lifecycle.stop(config)  # it leaves the environment as it found it, last
    else:
        environment.leave(config)
