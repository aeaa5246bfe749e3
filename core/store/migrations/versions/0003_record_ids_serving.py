"""Schema 3: every result row gets its record's own id (unique, so a retried write is a no-op), and a
table for load-benchmark points.

Rows written before record ids existed get a fresh id, written into their JSON too so column and
record agree.
"""

import json
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("results", sa.Column("record_id", sa.Text))
    results = sa.table("results", sa.column("id", sa.Integer), sa.column("record_id", sa.Text),
                       sa.column("record_json", sa.Text))
    for row_id, text in bind.execute(sa.select(results.c.id, results.c.record_json)).all():
        record = json.loads(text)
        record.setdefault("record_id", uuid.uuid4().hex)
        bind.execute(results.update().where(results.c.id == row_id).values(
            record_id=record["record_id"], record_json=json.dumps(record)))
    op.create_index("results_record_id", "results", ["record_id"], unique=True)
    op.create_table(
        "serving",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("record_id", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("created_at", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("technique", sa.Text),
        sa.Column("runtime", sa.Text),
        sa.Column("hardware", sa.Text),
        sa.Column("device", sa.Text),
        sa.Column("record_json", sa.Text, nullable=False),
        sa.UniqueConstraint("record_id", name="serving_record_id"),
    )
    op.create_index("serving_model_hardware", "serving", ["model", "hardware", "created_at"])
    if bind.dialect.name == "sqlite":
        op.execute("PRAGMA user_version = 3")
