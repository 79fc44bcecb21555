"""Keep the run's database passwords out of test reports: assertion diffs, tracebacks, output.

Fixture values carry the real password so that they connect (``dbguard_url``, ``DBGUARD_URL``,
``dbguard_faults.url``), and their reprs hide it. But pytest's assertion explanation shows a
string's text, not its repr (``assert dbguard_url == "..."``), and a traceback with ``-l`` or a
test's captured output may hold a plain copy. So an assertion explanation that would show a
password is rebuilt by pytest's own hook and masked (:func:`explain`), and as a catch-all a
report whose traceback or captured sections contain one is rewritten (:func:`scrub_report`).

Passwords are masked wherever they stand in a URL (``:password@``); anywhere else only when they
are long enough to be told apart from ordinary words (:data:`MIN_BARE`), and not the same as the
URL's user, host or database name, which stay readable.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable
from typing import Any, Final, NamedTuple
from urllib.parse import quote, quote_plus, unquote

import pytest

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.run.state import run_of

MASK: Final = "***"
MIN_BARE: Final = 8  # a shorter password is masked only inside a URL, else "test" would vanish


# The password of a URL, however it is encoded (``p%40ss`` or ``p@ss``-free raw text).
# As text: re compiles it on first use, not in every run's import.
_URL_PASSWORD: Final = r"(://[^:/@\s'\"]*:)([^@\s'\"]*)(@)"
# A password in a URL's query string, which libpq reads too (``?password=...``).
_QUERY_PASSWORD: Final = r"([?&](?i:ssl)?(?i:password)=)([^&#\s'\"]*)"


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class Secrets(NamedTuple):
    """The passwords to mask: inside a URL always, anywhere else where unambiguous (``bare``)."""

    passwords: frozenset[str] = frozenset()
    bare: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.passwords)

    def _in_url(self, match: re.Match[str]) -> bool:
        return unquote(match.group(2)) in self.passwords

    def _query_mask(self, match: re.Match[str]) -> str:
        """A query string's password value masked, when it starts with one of the passwords as
        written, percent- or plus-encoded (what follows it is not the password's: a ``)``)."""
        value = match.group(2)
        for secret in sorted(self.passwords, key=len, reverse=True):
            for form in _written(secret):
                if value.startswith(form):
                    return f"{match.group(1)}{MASK}{value[len(form) :]}"
        return match.group(0)

    def found_in(self, text: str) -> bool:
        """Whether ``text`` shows one of the passwords, or a part of one that pytest cut short."""
        return (
            any(secret in text for secret in self.bare)
            or any(self._in_url(match) for match in re.finditer(_URL_PASSWORD, text))
            or any(
                self._query_mask(match) != match.group(0)
                for match in re.finditer(_QUERY_PASSWORD, text)
            )
            or bool(self._cut_short(text))
        )

    def scrub(self, text: str) -> str:
        """``text`` with every password shown as ``***``."""
        text = re.sub(
            _URL_PASSWORD,
            lambda m: f"{m.group(1)}{MASK}{m.group(3)}" if self._in_url(m) else m.group(0),
            text,
        )
        text = re.sub(_QUERY_PASSWORD, self._query_mask, text)
        for secret in self.bare:
            text = text.replace(secret, MASK)
        for start, end in reversed(self._cut_short(text)):
            text = f"{text[:start]}{MASK}{text[end:]}"
        return text

    def _cut_short(self, text: str) -> list[tuple[int, int]]:
        """Where ``text`` shows a password that pytest shortened to its two ends around
        ``...`` (its repr of a long value: ``'6nL77F7m4kM2...05AC3PhokGTyv'``), or one end of it
        next to ``...``: the spans to mask, in order, each at least :data:`MIN_CUT` long."""
        spans: list[tuple[int, int]] = []
        dots = text.find("...")
        while dots != -1 and self.bare:
            head = max((_common_end(text, dots, secret) for secret in self.bare), default=0)
            tail = max((_common_start(text, dots + 3, secret) for secret in self.bare), default=0)
            start = dots - head if head >= MIN_CUT else dots
            end = dots + 3 + tail if tail >= MIN_CUT else dots + 3
            if end - start > 3:
                spans.append((start, end))
            dots = text.find("...", end)
        return spans


MIN_CUT: Final = 4  # an end of a password shown next to "...": masked from this length


def _common_end(text: str, end: int, secret: str) -> int:
    """How long a beginning of ``secret`` ``text`` shows right before position ``end``."""
    longest = 0
    for length in range(1, min(len(secret), end) + 1):
        if text.startswith(secret[:length], end - length):
            longest = length
    return longest


def _common_start(text: str, start: int, secret: str) -> int:
    """How long an end of ``secret`` ``text`` shows from position ``start`` on."""
    longest = 0
    for length in range(1, min(len(secret), len(text) - start) + 1):
        if text.startswith(secret[len(secret) - length :], start):
            longest = length
    return longest


def _written(password: str) -> tuple[str, ...]:
    """How a password may stand in a text: as typed, percent-encoded (a URL's user info), and
    plus-encoded (a query string, as dbguard's own URLs write it)."""
    return (password, quote(password, safe=""), quote_plus(password, safe=""))


def secrets_for(urls: Iterable[DatabaseURL | None]) -> Secrets:
    """The passwords of ``urls`` (in their user info or query string)."""
    passwords: set[str] = set()
    bare: set[str] = set()
    for url in urls:
        if url is None:
            continue
        ordinary = {url.username, url.host, url.database}
        for password in url.passwords():
            passwords.add(password)
            bare |= {
                form
                for form in _written(password)
                if len(form) >= MIN_BARE and form not in ordinary
            }
    # Longest first, so a password that contains another is masked whole.
    return Secrets(frozenset(passwords), tuple(sorted(bare, key=len, reverse=True)))


_secrets_key: Final = pytest.StashKey[Secrets]()
_explaining_key: Final = pytest.StashKey[bool]()


def secrets_of(config: pytest.Config) -> Secrets:
    """This run's passwords (the server's and the test database's); none when dbguard is idle."""
    if _secrets_key not in config.stash:
        run = run_of(config)
        if run is None:
            return Secrets()
        plan = run.plan
        config.stash[_secrets_key] = secrets_for([plan.server_url, plan.test_url, plan.async_url])
    return config.stash[_secrets_key]


def _shown(value: object) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    try:
        return repr(value)
    except Exception:  # a broken repr shows nothing of ours
        return ""


def explain(config: pytest.Config, op: str, left: object, right: object) -> list[str] | None:
    """pytest's own explanation of a failed comparison, with the run's passwords masked.

    None (pytest explains as usual) when neither side shows a password. Otherwise the hook is
    asked again, this implementation standing aside, and the answer it gives is masked.
    """
    secrets = secrets_of(config)
    if not secrets or config.stash.get(_explaining_key, False):
        return None
    if not (secrets.found_in(_shown(left)) or secrets.found_in(_shown(right))):
        return None
    config.stash[_explaining_key] = True
    try:
        answers = config.hook.pytest_assertrepr_compare(
            config=config, op=op, left=left, right=right
        )
    finally:
        config.stash[_explaining_key] = False
    for lines in answers:
        if lines:
            return [secrets.scrub(line) for line in lines]
    return None


def scrub_report(config: pytest.Config, report: pytest.TestReport | pytest.CollectReport) -> None:
    """Mask the run's passwords in a report's traceback and captured sections, where they occur.

    The traceback is masked in place, keeping its form (the short summary still shows the
    crash line); one that still shows a password after that (a form this code does not know)
    is replaced by its masked text, which terminal, junitxml and xdist all take.
    """
    described = getattr(report, "wasxfail", None) or getattr(report, "context", None)
    if report.longrepr is None and not report.sections and not described:
        return  # most reports: nothing to look at
    secrets = secrets_of(config)
    if not secrets:
        return
    if described:
        _scrub_description(report, secrets)
    if report.longrepr is not None and secrets.found_in(report.longreprtext):
        report.longrepr = _scrub_tree(report.longrepr, secrets, set())
        text = report.longreprtext
        if secrets.found_in(text):
            report.longrepr = secrets.scrub(text)
    if any(secrets.found_in(content) for _, content in report.sections):
        report.sections = [(title, secrets.scrub(content)) for title, content in report.sections]


def _scrub_description(report: pytest.TestReport | pytest.CollectReport, secrets: Secrets) -> None:
    """An xfail reason and a subtest's message and keyword values, which the summary shows."""
    reason = getattr(report, "wasxfail", None)
    if isinstance(reason, str) and secrets.found_in(reason):
        report.wasxfail = secrets.scrub(reason)  # type: ignore[union-attr]
    context = getattr(report, "context", None)  # pytest's SubtestContext (a frozen dataclass)
    msg, kwargs = getattr(context, "msg", None), getattr(context, "kwargs", None)
    if not isinstance(kwargs, dict):
        return
    texts = [str(value) for value in kwargs.values()] + ([msg] if isinstance(msg, str) else [])
    if any(secrets.found_in(text) for text in texts):
        masked = copy.copy(context)
        if isinstance(msg, str):
            object.__setattr__(masked, "msg", secrets.scrub(msg))
        scrubbed = {key: secrets.scrub(str(value)) for key, value in kwargs.items()}
        object.__setattr__(masked, "kwargs", scrubbed)
        report.context = masked  # type: ignore[union-attr]


def _scrub_tree(value: Any, secrets: Secrets, seen: set[int]) -> Any:
    """``value`` with its strings masked: lists in place, tuples rebuilt, dataclasses (pytest's
    traceback representation) field by field, through ``object.__setattr__`` as some are frozen."""
    if isinstance(value, str):
        return secrets.scrub(value)
    if id(value) in seen:
        return value
    seen.add(id(value))
    if isinstance(value, list):
        value[:] = [_scrub_tree(item, secrets, seen) for item in value]
    elif isinstance(value, tuple) and type(value) is tuple:
        return tuple(_scrub_tree(item, secrets, seen) for item in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            current = getattr(value, field.name, None)
            scrubbed = _scrub_tree(current, secrets, seen)
            if scrubbed is not current:
                object.__setattr__(value, field.name, scrubbed)
    return value


def scrub_warning(config: pytest.Config, record: Any) -> None:
    """Mask the run's passwords in a recorded warning (a ``warnings.WarningMessage``), before the
    terminal's warnings summary, junitxml or xdist's relay to the controller read it."""
    secrets = secrets_of(config)
    if not secrets:
        return
    message = record.message
    text = str(message)
    if not secrets.found_in(text):
        return
    category = type(message) if isinstance(message, Warning) else UserWarning
    try:
        record.message = category(secrets.scrub(text))
    except Exception:  # a warning class with its own constructor: keep its kind in the text
        record.message = UserWarning(f"{category.__name__}: {secrets.scrub(text)}")


class WarningScrubber:
    """The ``pytest_warning_recorded`` hook (which gets no config) bound to this run's config;
    first, so that every reader of the warning sees it masked."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_warning_recorded(self, warning_message: Any) -> None:
        scrub_warning(self.config, warning_message)


def register(config: pytest.Config) -> None:
    """Mask passwords in recorded warnings for this run."""
    if not config.pluginmanager.hasplugin("dbguard-warning-scrubber"):
        config.pluginmanager.register(WarningScrubber(config), "dbguard-warning-scrubber")
