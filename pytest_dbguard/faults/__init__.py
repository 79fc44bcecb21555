"""Fault injection: the ``dbguard_faults`` fixture (``fixtures``) over ``Faults`` (``injector``),
the loopback TCP proxy behind refuse/latency/cut (``proxy``, ``proxy_pipe``), ``assert_recovers``
(``recovery``), and the fence that keeps other workers off a restarting server
(``restart_fence``)."""
