"""Governance: tenant binding, de-duplicated presentations, rollout, retention aggregates, suppression.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Expand-only (the previous release keeps working on this schema: it never reads the new columns and
``disposition`` has a server default):

* ``served_cards``: ``issuer``, ``tenant`` (who the card was served to: feedback from another client
  is flagged), ``presentation_key`` (analytics count one presentation per topic, order and
  encounter/hook instance), ``disposition`` (shown, silent, suppressed).
* ``feedback``: ``issuer``, ``tenant`` (who sent it).
* ``analytics_daily``, ``analytics_reasons_daily``: what ``cds-service purge`` keeps of deleted rows.
* ``suppressions``: topics not shown again for a patient after an override (when configured).

The new tables are written out as they are at this revision. Columns and tables that already exist
are skipped (online), so a database made with ``metadata.create_all`` is adopted like in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.schema import CreateIndex, CreateTable

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_v2 = sa.MetaData()

analytics_daily = sa.Table(
    "analytics_daily",
    _v2,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("service_id", sa.String(100), primary_key=True),
    sa.Column("topic", sa.String(50), primary_key=True),
    sa.Column("disposition", sa.String(20), primary_key=True),
    sa.Column("served", sa.Integer, nullable=False),
    sa.Column("presentations", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("overridden", sa.Integer, nullable=False),
)

analytics_reasons_daily = sa.Table(
    "analytics_reasons_daily",
    _v2,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("service_id", sa.String(100), primary_key=True),
    sa.Column("topic", sa.String(50), primary_key=True),
    sa.Column("reason_key", sa.String(64), primary_key=True),
    sa.Column("override_system", sa.String(300)),
    sa.Column("override_code", sa.String(100)),
    sa.Column("override_display", sa.String(300)),
    sa.Column("count", sa.Integer, nullable=False),
)

suppressions = sa.Table(
    "suppressions",
    _v2,
    sa.Column("patient_hash", sa.String(64), primary_key=True),
    sa.Column("topic", sa.String(50), primary_key=True),
    sa.Column("until", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason_code", sa.String(100)),
    sa.Index("ix_suppressions_until", "until"),
)

NEW_COLUMNS = {
    "served_cards": (
        lambda: sa.Column("issuer", sa.String(255)),
        lambda: sa.Column("tenant", sa.String(255)),
        lambda: sa.Column("presentation_key", sa.String(64)),
        lambda: sa.Column("disposition", sa.String(20), nullable=False, server_default="shown"),
    ),
    "feedback": (
        lambda: sa.Column("issuer", sa.String(255)),
        lambda: sa.Column("tenant", sa.String(255)),
    ),
}
NEW_INDEXES = (("ix_served_cards_presentation_key", "served_cards", ["presentation_key"]),)
NEW_TABLES = (analytics_daily, analytics_reasons_daily, suppressions)


def upgrade() -> None:
    offline = context.is_offline_mode()
    inspector = None if offline else sa.inspect(op.get_bind())
    for table_name, columns in NEW_COLUMNS.items():
        existing = set() if offline else {c["name"] for c in inspector.get_columns(table_name)}
        missing = [make() for make in columns if make().name not in existing]
        if missing:
            with op.batch_alter_table(table_name) as batch:
                for column in missing:
                    batch.add_column(column)
    for name, table_name, columns in NEW_INDEXES:
        existing = set() if offline else {ix["name"] for ix in inspector.get_indexes(table_name)}
        if name not in existing:
            op.create_index(name, table_name, columns)
    for table in NEW_TABLES:
        if offline:
            op.execute(CreateTable(table))
            for index in table.indexes:
                op.execute(CreateIndex(index))
        elif not inspector.has_table(table.name):
            table.create(op.get_bind())


def downgrade() -> None:
    for table in reversed(NEW_TABLES):
        op.drop_table(table.name)
    op.drop_index("ix_served_cards_presentation_key", "served_cards")
    for table_name, columns in NEW_COLUMNS.items():
        with op.batch_alter_table(table_name) as batch:
            for make in columns:
                batch.drop_column(make().name)
