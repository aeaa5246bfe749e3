"""Schema 1: one row per measured variant; the full record as JSON beside the columns that filters use."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Text),
        sa.Column("created_at", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("technique", sa.Text),
        sa.Column("family", sa.Text),
        sa.Column("hardware", sa.Text),
        sa.Column("device", sa.Text),
        sa.Column("record_json", sa.Text, nullable=False),
    )
    op.create_index("results_model_hardware", "results", ["model", "hardware", "created_at"])
    op.create_index("results_run", "results", ["run_id"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("PRAGMA user_version = 1")
