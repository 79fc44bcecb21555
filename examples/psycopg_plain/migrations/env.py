from alembic import context

connection = context.config.attributes["connection"]  # dbguard hands over its connection
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
