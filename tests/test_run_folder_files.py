"""Run as root, dbguard gives each cluster's run folder to the account the server runs as, which
may plant anything under the names dbguard opens there: a link, a FIFO, a hard link. dbguard
follows none of them, never blocks on one, and says what it found."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pytest_dbguard.exceptions import ServerError
from pytest_dbguard.faults.restart_fence import RestartFence
from pytest_dbguard.server import run_folder_files
from tests.helpers import run_dbguard


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file the run folder's account must not reach through dbguard."""
    folder = tmp_path / "rootonly"
    folder.mkdir(mode=0o700)
    target = folder / "target"
    target.write_text("ORIGINAL\n")
    return target


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    return folder


def _refused(call: object) -> str:
    with pytest.raises(ServerError) as raised:
        call()  # type: ignore[operator]
    return str(raised.value)


def test_a_planted_link_is_not_followed(run_folder: Path, outside: Path) -> None:
    (run_folder / "server.log").symlink_to(outside)
    (run_folder / "faults.gate").symlink_to(outside.parent / "created-by-dbguard")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    message = _refused(lambda: run_folder_files.open_regular(run_folder / "server.log", flags))
    assert f"{run_folder / 'server.log'} is not a regular file of dbguard's" in message
    assert f"remove its folder {run_folder}" in message
    _refused(lambda: run_folder_files.read_text(run_folder / "server.log"))
    _refused(lambda: RestartFence(run_folder))
    assert outside.read_text() == "ORIGINAL\n"
    assert not (outside.parent / "created-by-dbguard").exists()


def test_a_planted_fifo_does_not_block(run_folder: Path) -> None:
    os.mkfifo(run_folder / "server.log")
    done: list[str] = []

    def read_and_append() -> None:
        done.append(_refused(lambda: run_folder_files.read_text(run_folder / "server.log")))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        path = run_folder / "server.log"
        done.append(_refused(lambda: run_folder_files.open_regular(path, flags)))

    reader = threading.Thread(target=read_and_append, daemon=True)
    reader.start()
    reader.join(10)
    assert len(done) == 2, "blocked on the FIFO"


def test_a_hard_link_is_refused(run_folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    os.link(elsewhere, run_folder / "dbguard.json")
    _refused(lambda: run_folder_files.read_text(run_folder / "dbguard.json"))


def test_its_own_files_open_as_usual(run_folder: Path) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    for _ in range(2):  # created, then appended to
        with open(run_folder_files.open_regular(run_folder / "server.log", flags), "ab") as log:
            log.write(b"line\n")
    assert run_folder_files.read_text(run_folder / "server.log") == "line\nline\n"
    assert oct((run_folder / "server.log").stat().st_mode & 0o777) == oct(0o600)
    with pytest.raises(FileNotFoundError):
        run_folder_files.read_text(run_folder / "missing")


def test_a_restart_does_not_append_the_log_through_a_planted_link(
    pytester: pytest.Pytester, outside: Path
) -> None:
    """The audit's case: the server's account replaced ``server.log`` with a link to a file only
    root may write; a restart (``dbguard_faults.restart()``) must not append the log to it."""
    pytester.makepyfile(
        test_restart=f"""
        import json, os
        from pathlib import Path
        import pytest

        def test_restart(dbguard_faults):
            root = Path(json.loads(os.environ["_DBGUARD_ORIGIN"])["embedded_root"])
            (root / "server.log").unlink()
            (root / "server.log").symlink_to({str(outside)!r})
            with pytest.raises(pytest.fail.Exception, match="is not a regular file of dbguard's"):
                dbguard_faults.restart()
            (root / "server.log").unlink()  # so that the run's end can show the log if it must
        """
    )
    run_dbguard(pytester).assert_outcomes(passed=1)
    assert outside.read_text() == "ORIGINAL\n"


def test_the_initdb_output_is_cached_only_from_the_run_folder_itself(
    run_folder: Path, tmp_path: Path
) -> None:
    """A fresh initdb's output (``<run folder>/initdb``) is copied into root's cache: a link
    planted under that name must not make root copy the folder it names."""
    from pytest_dbguard.server import initdb_cache

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "PG_VERSION").write_text("15\n")
    (elsewhere / "secret").write_text("root's\n")
    (run_folder / "initdb").symlink_to(elsewhere)
    cached = tmp_path / "cache" / "initdb-x"
    initdb_cache.fill(run_folder / "initdb", cached)
    assert not cached.exists()
    assert (elsewhere / "secret").read_text() == "root's\n"  # and nothing of it removed
    (run_folder / "initdb").unlink()
    (run_folder / "initdb").mkdir()
    (run_folder / "initdb" / "PG_VERSION").write_text("15\n")
    initdb_cache.fill(run_folder / "initdb", cached)
    assert (cached / "PG_VERSION").read_text() == "15\n"
    assert not (run_folder / "initdb").exists()
