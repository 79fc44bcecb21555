"""Guards that watch each test: naive datetimes (``naive_datetimes``, ``naive_origins``),
hidden dev-only modules (``hidden_modules``), statement counts (``query_counter``), connections
to foreign databases (``foreign_databases``, ``connection_guards``) and rows left behind
(``leaks``); ``hooks`` wires the per-test ones."""
