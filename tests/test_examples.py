"""The example projects run as they are, under dbguard on the embedded default, with and without -n 2.

Each pytest.ini activates what it needs with -p in addopts (django_app: pytest-django and
dbguard), so the sealed runs (plugin autoload off) name only xdist."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import plugin_args

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
@pytest.mark.parametrize(
    "example, passed", [("storage_app", 13), ("psycopg_plain", 9), ("django_app", 16)]
)
def test_example_runs_as_it_is(
    pytester: pytest.Pytester, example: str, passed: int, xdist: bool
) -> None:
    shutil.copytree(EXAMPLES / example, pytester.path, dirs_exist_ok=True)
    args = ["-n", "2"] if xdist else []
    result = pytester.runpytest_subprocess(
        *plugin_args(*args), *args
    )  # each pytest.ini activates dbguard with addopts
    result.assert_outcomes(passed=passed)
