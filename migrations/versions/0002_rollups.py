"""rollups: hourly probe, usage and outcome rollups, rolled-up hours and refresh state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 11:49:57.019093
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollup_hours",
        sa.Column("dataset", sa.String(length=32), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw_rows", sa.Integer(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "hour", name=op.f("pk_rollup_hours")),
    )
    op.create_table(
        "rollup_outcome_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
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
            "hour",
            "source",
            "provider",
            "model",
            "vantage",
            "app",
            "outcome",
            "error_code",
            name=op.f("pk_rollup_outcome_hourly"),
        ),
    )
    op.create_table(
        "rollup_probe_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
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
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_outcome", sa.String(length=24), nullable=False),
        sa.Column("last_error_code", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("hour", "provider", "model", "vantage", name=op.f("pk_rollup_probe_hourly")),
    )
    op.create_table(
        "rollup_state",
        sa.Column("dataset", sa.String(length=32), nullable=False),
        sa.Column("safe_id", sa.BigInteger(), nullable=False),
        sa.Column("pending_id", sa.BigInteger(), nullable=True),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("raw_floor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset", name=op.f("pk_rollup_state")),
    )
    op.create_table(
        "rollup_usage_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
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
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "provider", "model", "vantage", "app", "source", name=op.f("pk_rollup_usage_hourly")
        ),
    )


def downgrade() -> None:
    op.drop_table("rollup_usage_hourly")
    op.drop_table("rollup_state")
    op.drop_table("rollup_probe_hourly")
    op.drop_table("rollup_outcome_hourly")
    op.drop_table("rollup_hours")
