"""PostgreSQL servers: the embedded cluster (``cluster``, ``cluster_start``, ``cluster_auth``,
``initdb_cache``, ``kept_clusters``), the machine it runs on (``machine``: binaries, private
folders, processes), and proof that a server answers (``readiness``, ``connect_target``,
``connect_diagnosis``), whose connection is handed on rather than closed (``handover``)."""
