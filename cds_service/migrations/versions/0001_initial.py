"""Initial schema: served cards, feedback and the JWT jti replay cache.

Revision ID: 0001
Revises:
Create Date: 2026-06-01

``served_cards`` and ``feedback`` are written out here as they were at this revision (a migration is
history: later changes go into later revisions). ``jwt_replay`` is imported from cds_service.tables,
its single definition; should that table ever change, the revision that changes it
must cope with both shapes (a database created fresh gets the new shape from this revision).

Databases created before migrations existed (``metadata.create_all`` at start-up) are adopted: only
missing tables and indexes are created, then the revision is stamped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.schema import CreateIndex, CreateTable

from cds_service.tables import jwt_replay

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_v1 = sa.MetaData()

served_cards = sa.Table(
    "served_cards",
    _v1,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("hook", sa.String(50), nullable=False),
    sa.Column("hook_instance", sa.String(200), nullable=False),
    sa.Column("topic", sa.String(50), nullable=False),
    sa.Column("indicator", sa.String(20), nullable=False),
    sa.Column("suggestion_uuids", sa.Text, nullable=False),
    sa.Column("patient_hash", sa.String(64)),
    sa.Column("served_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_served_cards_served_at", "served_at"),
    sa.Index("ix_served_cards_topic", "topic"),
)

feedback = sa.Table(
    "feedback",
    _v1,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("card_uuid", sa.String(200), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("accepted_suggestions", sa.Text, nullable=False),
    sa.Column("override_system", sa.String(300)),
    sa.Column("override_code", sa.String(100)),
    sa.Column("override_display", sa.String(300)),
    sa.Column("user_comment", sa.Text),
    sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("known_card", sa.Boolean, nullable=False),
    sa.Column("flag", sa.String(100)),
    sa.Index("ix_feedback_card_uuid", "card_uuid"),
    sa.Index("ix_feedback_received_at", "received_at"),
)

TABLES = (served_cards, feedback, jwt_replay)


def _create(table: sa.Table) -> None:
    if context.is_offline_mode():
        op.execute(CreateTable(table))
        for index in sorted(table.indexes, key=lambda ix: ix.name or ""):
            op.execute(CreateIndex(index))
        return
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table(table.name):
        table.create(bind)  # with its indexes
        return
    existing = {index["name"] for index in inspector.get_indexes(table.name)}
    for index in table.indexes:
        if index.name not in existing:
            index.create(bind)


def upgrade() -> None:
    for table in TABLES:
        _create(table)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table.name)
