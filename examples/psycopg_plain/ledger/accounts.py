"""Accounts and transfers; every function commits its own work."""

from __future__ import annotations

from decimal import Decimal

from ledger.db import connect


class InsufficientFunds(Exception):
    """The source account cannot cover the transfer."""


def open_account(owner: str, balance: Decimal = Decimal("0")) -> int:
    with connect() as conn:
        row = conn.execute(
            "INSERT INTO accounts (owner, balance) VALUES (%s, %s) RETURNING id", (owner, balance)
        ).fetchone()
        assert row is not None
        return int(row[0])


def balance(account_id: int) -> Decimal:
    with connect() as conn:
        row = conn.execute("SELECT balance FROM accounts WHERE id = %s", (account_id,)).fetchone()
        assert row is not None
        return Decimal(row[0])


def transfer(source: int, target: int, amount: Decimal) -> None:
    """Move money atomically: both rows change or neither does."""
    with connect() as conn, conn.transaction():
        row = conn.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (source,)).fetchone()
        if row is None or Decimal(row[0]) < amount:
            raise InsufficientFunds(f"account {source} cannot pay {amount}")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))
        conn.execute(
            "INSERT INTO transfers (source, target, amount) VALUES (%s, %s, %s)", (source, target, amount)
        )


def transfer_count() -> int:
    with connect() as conn:
        row = conn.execute("SELECT count(*) FROM transfers").fetchone()
        assert row is not None
        return int(row[0])
