"""Schema 2: the arena's blind votes, one per (model, prompt, pair, session) so a tally cannot be stuffed.

variant_a < variant_b (technique keys, sorted) so that (a, b) and (b, a) are the same pair.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prompt_sha256", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("variant_a", sa.Text, nullable=False),
        sa.Column("variant_b", sa.Text, nullable=False),
        sa.Column("winner", sa.Text, nullable=False),
        sa.Column("session_id", sa.Text, nullable=False),
        sa.CheckConstraint("variant_a < variant_b", name="votes_pair_sorted"),
        sa.CheckConstraint("winner IN (variant_a, variant_b, '')", name="votes_winner_in_pair"),
        sa.UniqueConstraint("model", "prompt_sha256", "variant_a", "variant_b", "session_id", name="votes_one_per_session"),
    )
    op.create_index("votes_model", "votes", ["model"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("PRAGMA user_version = 2")
