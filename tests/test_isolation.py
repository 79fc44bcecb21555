"""Per-test isolation: rollback in both orders, savepoint commits, truncate, none, session data."""

from __future__ import annotations

import pytest

from tests.helpers import (
    APP_ENGINE_TESTS_HEAD,
    SCHEMAS_MODELS,
    copy_project,
    run_dbguard,
    run_dbguard_inprocess,
)
from tests.pgserver import TestServer

ORDERED_TESTS = """
    from sqlalchemy import func, select, text
    from models import Author

    def test_{first}_writes(dbguard_session):
        dbguard_session.add(Author(name="ada"))
        dbguard_session.commit()  # a savepoint release, not a real commit
        dbguard_session.add(Author(name="bob"))
        dbguard_session.commit()
        assert dbguard_session.scalar(select(func.count()).select_from(Author)) == 2

    def test_{second}_sees_nothing(dbguard_session, dbguard_connection):
        assert dbguard_session.scalar(select(func.count()).select_from(Author)) == 0
        assert dbguard_connection.execute(text("SELECT count(*) FROM authors")).scalar() == 0
"""


def _project(pytester: pytest.Pytester, *, url: str | None = None) -> None:
    copy_project(pytester, "library")
    ini = "[pytest]\ndbguard_metadata = models:Base\n"
    if url:
        ini += f"dbguard_url = {url}\n"
    pytester.makeini(ini)


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")], ids=["write-first", "read-first"])
@pytest.mark.parametrize("backend", ["embedded", "sqlite"])
def test_rollback_isolation_both_orders(
    pytester: pytest.Pytester, order: tuple[str, str], backend: str
) -> None:
    _project(pytester)
    pytester.makepyfile(test_order=ORDERED_TESTS.format(first=order[0], second=order[1]))
    args = ["--dbguard-url", "sqlite"] if backend == "sqlite" else []
    result = run_dbguard(pytester, *args, "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=2)


SHARED_CONNECTION = """
    from sqlalchemy import func, select, text
    from models import Author

    def same_connection(session, connection):
        return session.connection().connection.dbapi_connection is (
            connection.connection.dbapi_connection
        )

    def test_session_alone_does_not_pull_in_the_connection_fixture(request, dbguard_session):
        assert "dbguard_connection" not in request.fixturenames

    def test_session_first(dbguard_session, dbguard_connection):
        assert same_connection(dbguard_session, dbguard_connection)
        dbguard_session.add(Author(name="ada"))
        dbguard_session.commit()
        assert dbguard_connection.execute(text("SELECT count(*) FROM authors")).scalar() == 1

    def test_connection_first(dbguard_connection, dbguard_session):
        assert same_connection(dbguard_session, dbguard_connection)
        dbguard_connection.execute(text("INSERT INTO authors (name) VALUES ('bob')"))
        assert dbguard_session.scalar(select(func.count()).select_from(Author)) == 1

    def test_then_nothing_is_left(dbguard_connection):
        assert dbguard_connection.execute(text("SELECT count(*) FROM authors")).scalar() == 0
"""


def test_session_and_connection_share_the_tests_one_connection(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    # dbguard_session no longer requests dbguard_connection (a function-scoped fixture in the
    # chain costs every test); both still see one connection and one rolled-back transaction.
    _project(pytester, url=pg_server.url())
    pytester.makepyfile(test_shared=SHARED_CONNECTION)
    run_dbguard(pytester, "-p", "no:randomly", inprocess=True).assert_outcomes(passed=4)


def test_commit_in_test_survives_inside_but_not_after(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A real commit through the fixture connection is a savepoint; the server never sees the row."""
    _project(pytester, url=pg_server.url())
    pytester.makepyfile(
        """
        import os
        from sqlalchemy import create_engine, text
        from models import Author

        def test_write(dbguard_session):
            dbguard_session.add(Author(name="ada"))
            dbguard_session.commit()
            other = create_engine(os.environ["DBGUARD_URL"])
            with other.connect() as conn:  # another connection cannot see uncommitted work
                assert conn.execute(text("SELECT count(*) FROM authors")).scalar() == 0
            other.dispose()
        """
    )
    result = run_dbguard(pytester, inprocess=True)
    result.assert_outcomes(passed=1)


TRUNCATE_TESTS = APP_ENGINE_TESTS_HEAD + """

    @pytest.mark.dbguard(isolation="truncate")
    def test_1_app_commits_with_its_own_connection():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('ada'), ('bob')"))
            conn.execute(text("INSERT INTO books (author_id, title) SELECT id, 't' FROM authors"))

    @pytest.mark.dbguard(isolation="truncate")
    def test_2_tables_empty_and_ids_restart(dbguard_connection):
        assert dbguard_connection.execute(text("SELECT count(*) FROM books")).scalar() == 0
        new_id = dbguard_connection.execute(
            text("INSERT INTO authors (name) VALUES ('cy') RETURNING id")).scalar()
        dbguard_connection.commit()
        assert new_id == 1

    def test_3_after_truncate_test_committed_through_fixture():
        with ENGINE.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM authors")).scalar() == 0

    @pytest.mark.dbguard(isolation="none")
    def test_4_none_keeps_commits():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('kept')"))

    def test_5_sees_what_none_kept():
        with ENGINE.connect() as conn:
            assert conn.execute(text("SELECT name FROM authors")).scalars().all() == ["kept"]
"""


KEPT_BY_TRUNCATE = """
    import os
    import pytest
    from sqlalchemy import create_engine, text

    ENGINE = create_engine(os.environ["DBGUARD_URL"])

    def names():
        with ENGINE.connect() as conn:
            return conn.execute(text("SELECT id, name FROM authors ORDER BY id")).all()

    @pytest.fixture(scope="session", autouse=True)
    def admin():  # the application's own set-up, in the first test's setup
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('admin')"))

    @pytest.fixture
    def guest():  # the test's own fixture: its row is the test's
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('guest')"))

    @pytest.mark.dbguard(isolation="truncate")
    def test_1_truncate_first(guest):
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('ada')"))
            conn.execute(text("UPDATE authors SET name = 'renamed' WHERE name = 'nobody'"))

    def test_2_seed_and_session_rows_stay():
        assert names() == [(1, "seed"), (2, "admin")]

    @pytest.mark.dbguard(isolation="truncate")
    def test_3_ids_go_on_from_where_the_test_found_them():
        with ENGINE.begin() as conn:
            new_id = conn.execute(text("INSERT INTO authors (name) VALUES ('bob') RETURNING id")).scalar()
        assert new_id == 3

    def test_4_only_the_test_rows_went():
        assert names() == [(1, "seed"), (2, "admin")]
"""


def test_truncate_empties_what_the_test_wrote_and_keeps_what_was_there(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A truncate test empties the rows it wrote (its fixtures' too), not the schema's seed row
    nor what a session fixture committed during its setup, and sets sequences back to where it
    found them: the next insert does not collide with the rows that stay."""
    copy_project(pytester, "library")
    pytester.makepyfile(
        seed_models="""
            from sqlalchemy import DDL, event

            from models import Author, Base

            event.listen(
                Author.__table__, "after_create", DDL("INSERT INTO authors (name) VALUES ('seed')")
            )
        """,
        test_kept=KEPT_BY_TRUNCATE,
    )
    pytester.makeini("[pytest]\ndbguard_metadata = seed_models:Base\n")
    result = run_dbguard(
        pytester, "--dbguard-url", pg_server.url(), "-p", "no:randomly", inprocess=True
    )
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize("backend", ["embedded", "sqlite"])
def test_truncate_and_none_markers(pytester: pytest.Pytester, backend: str) -> None:
    _project(pytester)
    pytester.makepyfile(test_truncate=TRUNCATE_TESTS)
    args = ["--dbguard-url", "sqlite"] if backend == "sqlite" else []
    result = run_dbguard(pytester, *args, "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=5)


def test_default_isolation_from_ini(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    _project(pytester)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\ndbguard_isolation = truncate\n")
    pytester.makepyfile(
        """
        import os
        from sqlalchemy import create_engine, text

        ENGINE = create_engine(os.environ["DBGUARD_URL"])

        def test_1_commit():
            with ENGINE.begin() as conn:
                conn.execute(text("INSERT INTO authors (name) VALUES ('ada')"))

        def test_2_empty():
            with ENGINE.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM authors")).scalar() == 0
        """
    )
    # Not about the embedded server: the shared one, without a cluster start per run.
    url = ["--dbguard-url", pg_server.url()]
    run_dbguard(pytester, *url, "-p", "no:randomly", inprocess=True).assert_outcomes(passed=2)


def test_session_scoped_data_survives_between_tests(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    _project(pytester)
    pytester.makeconftest(
        """
        import pytest
        from sqlalchemy import text

        @pytest.fixture(scope="session", autouse=True)
        def reference_data(dbguard_engine):
            with dbguard_engine.begin() as conn:
                conn.execute(text("INSERT INTO authors (name) VALUES ('reference')"))
        """
    )
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import select
        from models import Author

        @pytest.mark.parametrize("n", range(3))
        def test_reference_row_is_there(dbguard_session, n):
            names = dbguard_session.scalars(select(Author.name)).all()
            assert names == ["reference"]
            dbguard_session.add(Author(name=f"temp{n}"))
            dbguard_session.commit()
        """
    )
    # Not about the embedded server: the shared one, without a cluster start per run.
    run_dbguard(pytester, "--dbguard-url", pg_server.url(), inprocess=True).assert_outcomes(
        passed=3
    )


def test_bad_isolation_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.dbguard(isolation="rolback")
        def test_x():
            pass
        """
    )
    result = run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*isolation='rolback'*rollback, truncate, none*"])


def test_truncator_resets_sequences_of_emptied_tables(pg_server: TestServer) -> None:
    """A test that inserted and deleted again leaves no row, only a moved sequence: still dirty."""
    from sqlalchemy import create_engine, text

    from pytest_dbguard.db.truncation import Truncator

    pg_server.sql("CREATE DATABASE truncator_probe")
    engine = create_engine(pg_server.url(database="truncator_probe"))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE parents (id serial PRIMARY KEY)"))
            conn.execute(
                text(
                    "CREATE TABLE kids (id int GENERATED ALWAYS AS IDENTITY, parent int REFERENCES parents)"
                )
            )
            conn.execute(text("CREATE TABLE untouched (id serial PRIMARY KEY)"))
        truncator = Truncator(engine)
        assert truncator.clean() == []
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO parents DEFAULT VALUES"))
            conn.execute(text("INSERT INTO kids (parent) VALUES (1)"))
            conn.execute(text("DELETE FROM kids"))
        assert sorted(truncator.clean()) == ["kids", "parents"]
        with engine.begin() as conn:
            assert (
                conn.execute(text("INSERT INTO kids (parent) VALUES (NULL) RETURNING id")).scalar()
                == 1
            )
            assert (
                conn.execute(text("INSERT INTO parents DEFAULT VALUES RETURNING id")).scalar() == 1
            )
    finally:
        engine.dispose()
        pg_server.sql("DROP DATABASE truncator_probe")


def test_truncator_deletes_children_first_and_truncates_what_delete_cannot(
    pg_server: TestServer,
) -> None:
    """Rows that refer to each other go in foreign-key order; a DELETE trigger or a cycle of
    foreign keys gets TRUNCATE, so no trigger fires and nothing is left."""
    from sqlalchemy import create_engine, text

    from pytest_dbguard.db.truncation import Truncator

    pg_server.sql("CREATE DATABASE truncator_order")
    engine = create_engine(pg_server.url(database="truncator_order"))
    schema = [
        "CREATE TABLE grandparents (id serial PRIMARY KEY)",
        "CREATE TABLE parents (id serial PRIMARY KEY, up int NOT NULL REFERENCES grandparents)",
        "CREATE TABLE kids (id serial PRIMARY KEY, up int NOT NULL REFERENCES parents,"
        " sibling int REFERENCES kids)",
        "CREATE TABLE audit (id serial PRIMARY KEY, what text)",
        "CREATE TABLE audited (id serial PRIMARY KEY)",
        "CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO audit (what) VALUES ('deleted'); RETURN OLD; END $$",
        "CREATE TRIGGER audited_delete BEFORE DELETE ON audited FOR EACH ROW"
        " EXECUTE FUNCTION log_delete()",
        "CREATE TABLE chicken (id serial PRIMARY KEY, egg int)",
        "CREATE TABLE egg (id serial PRIMARY KEY, chicken int REFERENCES chicken)",
        "ALTER TABLE chicken ADD FOREIGN KEY (egg) REFERENCES egg DEFERRABLE INITIALLY DEFERRED",
    ]
    fill = [
        "INSERT INTO grandparents DEFAULT VALUES",
        "INSERT INTO parents (up) VALUES (1)",
        "INSERT INTO kids (up) VALUES (1)",
        "INSERT INTO kids (up, sibling) VALUES (1, 1)",
    ]
    try:
        with engine.begin() as conn:
            for statement in schema:
                conn.execute(text(statement))
        truncator = Truncator(engine)
        # TRUNCATE gives a table a new file, DELETE does not: that tells which one ran.
        files = text("SELECT pg_relation_filenode('kids')")
        for extra, emptied, truncated in [
            ([], ["grandparents", "kids", "parents"], False),  # DELETE, children first
            (
                ["INSERT INTO audited DEFAULT VALUES"],
                ["audited", "grandparents", "kids", "parents"],
                True,
            ),
            (
                ["INSERT INTO chicken (egg) VALUES (1)", "INSERT INTO egg (chicken) VALUES (1)"],
                ["chicken", "egg", "grandparents", "kids", "parents"],
                True,
            ),
        ]:
            with engine.begin() as conn:
                for statement in fill + extra:
                    conn.execute(text(statement))
                before = conn.execute(files).scalar()
            assert sorted(truncator.clean()) == emptied
            with engine.begin() as conn:
                assert (conn.execute(files).scalar() != before) is truncated
                for table in ["audit", *emptied]:
                    assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
                # Identities start over, as after TRUNCATE ... RESTART IDENTITY.
                assert (
                    conn.execute(
                        text("INSERT INTO grandparents DEFAULT VALUES RETURNING id")
                    ).scalar()
                    == 1
                )
            truncator.clean()
    finally:
        engine.dispose()
        pg_server.sql("DROP DATABASE truncator_order")


DEAD_POOLED_CONNECTION = """
    from sqlalchemy import text

    PIDS = []

    def test_1_uses_a_connection(dbguard_connection):
        PIDS.append(dbguard_connection.execute(text("SELECT pg_backend_pid()")).scalar())

    def test_2_server_ends_the_idle_pooled_connection(dbguard_faults):
        assert dbguard_faults.terminate() >= 1

    def test_3_gets_a_live_connection(dbguard_connection, dbguard_session):
        pid = dbguard_connection.execute(text("SELECT pg_backend_pid()")).scalar()
        assert pid != PIDS[0]
"""


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_dead_pooled_connection_is_replaced(
    pytester: pytest.Pytester, pg_server: TestServer, driver: str
) -> None:
    # dbguard_connection skips pool_pre_ping's round trip: a pooled connection the server closed
    # must still never reach a test.
    pytester.makepyfile(DEAD_POOLED_CONNECTION)
    run_dbguard(
        pytester, "--dbguard-url", pg_server.url(driver=driver), inprocess=True
    ).assert_outcomes(passed=3)


SCHEMAS_TESTS = APP_ENGINE_TESTS_HEAD + """

    def rows():
        with ENGINE.connect() as conn:
            groups = conn.execute(text("SELECT id FROM groups ORDER BY id")).scalars().all()
            members = conn.execute(text("SELECT id FROM people.members ORDER BY id")).scalars()
            return groups, members.all()

    @pytest.mark.dbguard(isolation="none")
    def test_0_kept_rows():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO groups (id, name) VALUES (10, 'kept')"))
            conn.execute(text("INSERT INTO people.members (id, group_id) VALUES (10, 10)"))

    @pytest.mark.dbguard(isolation="truncate")
    def test_1_commits_in_both_schemas():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO groups (id, name) VALUES (1, 'g')"))
            conn.execute(text("INSERT INTO people.members (id, group_id) VALUES (1, 1)"))
            conn.execute(text("INSERT INTO people.members (id) VALUES (2)"))

    def test_2_only_the_truncate_tests_rows_went():
        # Deleted row by row, children first across the schemas: not TRUNCATE ... CASCADE,
        # which would have taken the kept rows too.
        assert rows() == ([10], [10])

    def test_3_leaks_into_the_other_schema():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO people.members (id) VALUES (7)"))
"""


@pytest.mark.parametrize("backend", ["embedded", "external"])
def test_truncate_and_the_leak_check_see_every_schema_of_the_workers_database(
    pytester: pytest.Pytester, pg_server: TestServer, backend: str
) -> None:
    """Tables outside the search path's first schema are the tests' too, in a database of the
    worker's own: truncate empties them (children first, across schemas) and the leak check
    names them. Before, both looked at current_schema() alone and missed them without a word."""
    pytester.makepyfile(models=SCHEMAS_MODELS, test_schemas=SCHEMAS_TESTS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    url = ["--dbguard-url", pg_server.url()] if backend == "external" else []
    result = run_dbguard(pytester, *url, "-p", "no:randomly", "-W", "default")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*LeakWarning: test_schemas.py::test_3_leaks_into_the_other_schema left rows in "
            "people.members*"
        ]
    )


SHARED_SCHEMA_TESTS = APP_ENGINE_TESTS_HEAD + """

    @pytest.mark.dbguard(isolation="truncate")
    def test_1_writes_outside_its_worker_schema():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO public.shared_notes (body) VALUES ('theirs')"))
"""


def test_with_a_schema_per_worker_truncate_stays_in_the_workers_schema(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """In the shared database of a role without CREATEDB the other schemas are other workers' or
    nobody's: a truncate test's rows there stay, however it wrote them."""
    pg_server.sql(
        "CREATE TABLE IF NOT EXISTS public.shared_notes (body text); "
        "ALTER TABLE public.shared_notes OWNER TO limited; TRUNCATE public.shared_notes",
        database="app_limited",
    )
    try:
        copy_project(pytester, "notes")
        pytester.makepyfile(test_shared=SHARED_SCHEMA_TESTS)
        pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
        url = pg_server.url(database="app_limited", user="limited")
        result = run_dbguard(pytester, "--dbguard-url", url, "-W", "default")
        result.assert_outcomes(passed=1)
        left = pg_server.sql("SELECT body FROM public.shared_notes", database="app_limited")
        assert left.stdout.split() == ["theirs"]
    finally:
        pg_server.sql("DROP TABLE IF EXISTS public.shared_notes", database="app_limited")
