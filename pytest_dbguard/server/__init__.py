"""PostgreSQL servers: the embedded cluster (``cluster``, ``cluster_start``, ``cluster_auth``,
``initdb_cache``, ``kept_clusters``) and the files of its run folder, which the server's account
owns (``run_folder_files``), the machine it runs on (``machine``: binaries, private folders,
its postmaster; ``processes``: what /proc says of a process), and proof that a server answers (``readiness``, ``connect_target``,
``connect_diagnosis``), whose connection is handed on rather than closed (``handover``)."""
