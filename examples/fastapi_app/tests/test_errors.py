"""Which errors are a database outage (503, retry later) and which are bugs (500)."""

from __future__ import annotations

import errno

import pytest
from app.errors import is_unavailable
from sqlalchemy import exc


def wrapped(cls: type[exc.DBAPIError], invalidated: bool = False) -> exc.DBAPIError:
    return cls("SELECT 1", None, Exception("driver message"), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "error, unavailable",
    [
        pytest.param(wrapped(exc.OperationalError), True, id="OperationalError"),
        pytest.param(wrapped(exc.InterfaceError), True, id="InterfaceError"),
        pytest.param(wrapped(exc.DBAPIError, invalidated=True), True, id="disconnect"),
        pytest.param(exc.TimeoutError("QueuePool limit reached"), True, id="pool timeout"),
        pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), True, id="reset"),
        pytest.param(OSError(errno.EHOSTUNREACH, "No route to host"), True, id="unreachable"),
        pytest.param(TimeoutError(), True, id="timeout"),
        pytest.param(wrapped(exc.IntegrityError), False, id="IntegrityError"),
        pytest.param(wrapped(exc.DataError), False, id="DataError"),
        pytest.param(FileNotFoundError(errno.ENOENT, "gone"), False, id="FileNotFoundError"),
    ],
)
def test_outages_are_told_from_bugs(error: BaseException, unavailable: bool) -> None:
    assert is_unavailable(error) is unavailable
