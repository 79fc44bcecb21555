"""One pytest run: the object that holds it (``state``), its flags, ini keys and variables
(``options``) and their values (``config``), the plan it makes before any conftest is imported
(``run_plan``, ``environment``; ``early_imports`` names the project's modules imported before
it, with the conftest opt-in) and what it says of a conftest that connects while pytest
imports it (``conftest_failures``), its life from start to stop (``lifecycle``, ``termination``,
``worker_failures``, ``reuse_run``), the wrapper around each test's phases that only a run that
runs tests registers (``phases``), the xdist workers on other hosts that join it
(``remote_workers``), the template its databases are cloned from (``templates``) and the one the
xdist controller builds while its workers start (``early_template``, stopped by
``thread_stop`` when the run ends first), how setting values are read
(``setting_values``), what it prints (``summary_line``, ``redaction``), the markers it takes
(``markers``), the failed tests whose data ``--dbguard-keep-failed`` keeps (``failed_tests``),
and the JSON run report of ``--dbguard-report`` (``report``, which loads its hooks,
``report_recorder``, only with the option; its document ``report_document``, the file
``report_file``)."""
