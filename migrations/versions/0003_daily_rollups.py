"""daily rollups per zone: probe, usage and outcome rollups summed per local day of each kept zone

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 14:47:12.901667
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollup_outcome_daily",
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("vantage", sa.String(length=64), nullable=False),
        sa.Column("app", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("http_429", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "zone",
            "day",
            "source",
            "provider",
            "model",
            "vantage",
            "app",
            "outcome",
            "error_code",
            name=op.f("pk_rollup_outcome_daily"),
        ),
    )
    op.create_table(
        "rollup_probe_daily",
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("vantage", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("throttled", sa.Integer(), nullable=False),
        sa.Column("http_429", sa.Integer(), nullable=False),
        sa.Column("retry_after_count", sa.Integer(), nullable=False),
        sa.Column("retry_after_sum_s", sa.Float(), nullable=False),
        sa.Column("retry_after_max_s", sa.Float(), nullable=True),
        sa.Column("ttft_count", sa.Integer(), nullable=False),
        sa.Column("ttft_sum_ms", sa.Float(), nullable=False),
        sa.Column("ttft_hist", sa.LargeBinary(), nullable=False),
        sa.Column("total_count", sa.Integer(), nullable=False),
        sa.Column("total_sum_ms", sa.Float(), nullable=False),
        sa.Column("total_hist", sa.LargeBinary(), nullable=False),
        sa.Column("tps_count", sa.Integer(), nullable=False),
        sa.Column("tps_sum", sa.Float(), nullable=False),
        sa.Column("tps_hist", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("zone", "day", "provider", "model", "vantage", name=op.f("pk_rollup_probe_daily")),
    )
    op.create_table(
        "rollup_usage_daily",
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("utc_day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("vantage", sa.String(length=64), nullable=False),
        sa.Column("app", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("throttled", sa.Integer(), nullable=False),
        sa.Column("http_429", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("images", sa.BigInteger(), nullable=False),
        sa.Column("unpriced", sa.Integer(), nullable=False),
        sa.Column("cost_usd_e10", sa.BigInteger(), nullable=False),
        sa.Column("cost_cny_e10", sa.BigInteger(), nullable=False),
        sa.Column("cost_jpy_e10", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "zone",
            "day",
            "utc_day",
            "provider",
            "model",
            "vantage",
            "app",
            "source",
            name=op.f("pk_rollup_usage_daily"),
        ),
    )
    op.create_table(
        "rollup_zones",
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("zone", name=op.f("pk_rollup_zones")),
    )


def downgrade() -> None:
    op.drop_table("rollup_zones")
    op.drop_table("rollup_usage_daily")
    op.drop_table("rollup_probe_daily")
    op.drop_table("rollup_outcome_daily")
