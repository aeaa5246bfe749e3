"""The schema this code reads: its version, the table names that are ours, and mirrors of the tables
for queries. core/store/migrations/ creates and upgrades the tables themselves (Alembic).
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 3  # 1: results; 2: + votes (the arena's blind votes); 3: + record ids, serving
OUR_TABLES = frozenset({"results", "votes", "serving"})

_meta = sa.MetaData()
# Mirrors of the migrated tables, for queries only; core/store/migrations/ creates them.
RESULTS = sa.Table(
    "results", _meta,
    sa.Column("id", sa.Integer, primary_key=True), sa.Column("run_id", sa.Text), sa.Column("created_at", sa.Text),
    sa.Column("model", sa.Text), sa.Column("technique", sa.Text), sa.Column("family", sa.Text),
    sa.Column("hardware", sa.Text), sa.Column("device", sa.Text), sa.Column("record_json", sa.Text),
    sa.Column("record_id", sa.Text),
)
VOTES = sa.Table(
    "votes", _meta,
    sa.Column("id", sa.Integer, primary_key=True), sa.Column("created_at", sa.Text), sa.Column("model", sa.Text),
    sa.Column("prompt_sha256", sa.Text), sa.Column("prompt", sa.Text), sa.Column("variant_a", sa.Text),
    sa.Column("variant_b", sa.Text), sa.Column("winner", sa.Text), sa.Column("session_id", sa.Text),
)
SERVING = sa.Table(
    "serving", _meta,
    sa.Column("id", sa.Integer, primary_key=True), sa.Column("record_id", sa.Text), sa.Column("run_id", sa.Text),
    sa.Column("created_at", sa.Text), sa.Column("model", sa.Text), sa.Column("technique", sa.Text),
    sa.Column("runtime", sa.Text), sa.Column("hardware", sa.Text), sa.Column("device", sa.Text),
    sa.Column("record_json", sa.Text),
)
