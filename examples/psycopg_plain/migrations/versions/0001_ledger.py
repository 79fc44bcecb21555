"""accounts and transfers, in plain SQL"""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE accounts (
            id serial PRIMARY KEY,
            owner text NOT NULL,
            balance numeric(12, 2) NOT NULL CHECK (balance >= 0)
        );
        CREATE TABLE transfers (
            id serial PRIMARY KEY,
            source integer NOT NULL REFERENCES accounts (id),
            target integer NOT NULL REFERENCES accounts (id),
            amount numeric(12, 2) NOT NULL
        );
        """
    )
