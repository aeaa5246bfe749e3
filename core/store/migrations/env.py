"""Alembic environment: the store hands us an open connection (already in its transaction), we migrate on it."""

from alembic import context

from core.store.migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
