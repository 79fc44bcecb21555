"""examples/fastapi_app runs as it is: serially and under -n 2, on the embedded default.

The single place the example is run from this suite. Its pytest.ini loads pytest-asyncio and
dbguard with ``-p`` in addopts, so the sealed run (plugin autoload off) needs only xdist named.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import plugin_args

EXAMPLE = Path(__file__).parent.parent / "examples" / "fastapi_app"
PASSED = 28  # test_items 5, test_health 8, test_errors 10, test_recovery 5
# What a clean exit never prints, whatever the warning filters.
EXIT_NOISE = (
    "*Event loop is closed*",
    "*was never awaited*",
    "*ResourceWarning*",
    "*Exception ignored*",
    "*unclosed*",
)


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_fastapi_example_runs_as_it_is(pytester: pytest.Pytester, xdist: bool) -> None:
    shutil.copytree(
        EXAMPLE,
        pytester.path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".venv"),
    )
    args = ["-n", "2"] if xdist else []
    result = pytester.runpytest_subprocess(*plugin_args(*args), *args, timeout=300)
    result.assert_outcomes(passed=PASSED)
    # Serially the header names the proxy that routes the app's own engine through the faults.
    result.stdout.fnmatch_lines(
        ["2 workers [[]28 items[]]" if xdist else "dbguard: fault proxy on *"]
    )
    for pattern in EXIT_NOISE:
        result.stdout.no_fnmatch_line(pattern)
        result.stderr.no_fnmatch_line(pattern)
