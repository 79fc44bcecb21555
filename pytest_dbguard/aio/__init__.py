"""Async support: one session-scoped event loop for dbguard's async fixtures and the tests that
use them (``asyncloop``, ``loop_policy``), the async fixtures (``async_fixtures``), and the clear
failure for a fixture used from another loop (``loop_mismatch``)."""
