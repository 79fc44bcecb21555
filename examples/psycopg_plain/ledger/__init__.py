"""A ledger written with plain psycopg: no ORM, raw SQL, connections opened by the app itself."""
