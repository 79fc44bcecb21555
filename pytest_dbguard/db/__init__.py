"""Test databases: URLs (``urls``) and the names dbguard gives what it creates (``names``),
engines (``engines``, ``engine_listener``) and dbguard's own maintenance connection
(``maintenance``), the per-worker databases cloned from a template
(``databases``, ``schema``, ``schema_fingerprint`` for kept ones, ``kept_templates``,
``alembic_runner``; ``alembic_ini``
reads what an alembic.ini names), the schema per worker of a role
that may not create databases (``worker_schemas``), the schema drift check
(``schema_drift``, and ``check_schema`` behind ``dbguard check-schema``), the core fixtures (``fixtures``),
per-test isolation (``isolation``, ``truncation``), a failed test's data copied before its rollback
(``kept_failed``), and the marks and sweeps that let only dbguard's own databases be dropped
(``marks``, ``janitor``, ``schema_janitor``, ``sql``)."""
