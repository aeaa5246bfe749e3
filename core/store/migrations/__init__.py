"""The results store's schema, one Alembic revision per version: 0001 results, 0002 votes, 0003 record ids + serving.

Revision ids are the schema numbers, so a store's version reads the same in the version table (both
backends) and, for SQLite files, in PRAGMA user_version, which stores older than Alembic used.
"""

VERSION_TABLE = "lab_schema_version"  # not Alembic's default name: a shared database may hold another app's
