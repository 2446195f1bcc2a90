"""token counts are 64-bit: a count past 2**31 is stored, not refused with the whole event

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("usage_events", "probe_results")
COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens", "images")


def _alter(to: type[sa.types.TypeEngine[int]], frm: type[sa.types.TypeEngine[int]]) -> None:
    # SQLite's INTEGER already holds 64 bits; rebuilding a large table there would change nothing stored.
    if op.get_bind().dialect.name == "sqlite":
        return
    for table in TABLES:
        for column in COLUMNS:
            op.alter_column(table, column, type_=to(), existing_type=frm(), existing_nullable=True)


def upgrade() -> None:
    _alter(sa.BigInteger, sa.Integer)


def downgrade() -> None:
    _alter(sa.Integer, sa.BigInteger)
