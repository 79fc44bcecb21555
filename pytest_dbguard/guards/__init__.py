"""Guards that watch each test: naive datetimes (``naive_datetimes``, ``naive_origins``),
hidden dev-only modules (``hidden_modules``), statement counts (``query_counter``) and
times for the run report (``statement_timing``), connections
to foreign databases (``foreign_databases``, ``connection_guards``) and rows left behind
(``leaks``); ``hooks`` wires the per-test ones, naming the running test for their messages
(``lazy_node_id``), and ``fixtures`` holds ``dbguard_queries``."""
