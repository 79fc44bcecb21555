from __future__ import annotations

from decimal import Decimal

import pytest
from ledger import accounts


def test_transfer_moves_money() -> None:
    alice = accounts.open_account("alice", Decimal("100"))
    bob = accounts.open_account("bob")
    accounts.transfer(alice, bob, Decimal("30"))
    assert accounts.balance(alice) == Decimal("70")
    assert accounts.balance(bob) == Decimal("30")
    assert accounts.transfer_count() == 1


def test_previous_commits_are_gone_and_ids_restart() -> None:
    assert accounts.transfer_count() == 0
    assert accounts.open_account("carol") == 1  # sequences are reset too


def test_failed_transfer_changes_nothing() -> None:
    alice = accounts.open_account("alice", Decimal("10"))
    bob = accounts.open_account("bob")
    with pytest.raises(accounts.InsufficientFunds):
        accounts.transfer(alice, bob, Decimal("50"))
    assert accounts.balance(alice) == Decimal("10")
    assert accounts.transfer_count() == 0


@pytest.mark.parametrize("n", range(6))
def test_many_accounts(n: int) -> None:
    ids = [accounts.open_account(f"owner{i}") for i in range(n + 1)]
    assert ids == list(range(1, n + 2))
