"""Every database table the service owns, in one SQLAlchemy ``MetaData``.

This module imports nothing from the package: the store, the analytics, the JWT replay cache and the
Alembic migrations all import their tables from here, so none of them imports another to find a table
(the old ``store`` ↔ ``migrations`` ↔ ``auth`` circle). Tables are created and changed only by the
migrations in :mod:`cds_service.migrations` (``cds-service migrate``); a change here needs a new
revision, which the drift test (tests/cluster/test_migrations.py) enforces.

No patient identifier is stored anywhere: at most a keyed HMAC of the patient id (``patient_hash``,
only when ``CDS_PATIENT_HASH_KEY`` is set) and a hash of the presentation (topic, encounter or hook
instance, order), which lets analytics count one presentation per order without keeping the ids.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

#: Longest ``iss`` and ``jti`` accepted (tokens with longer values are refused before any lookup).
MAX_ISS_CHARS = 255
MAX_JTI_CHARS = 255
MAX_TENANT_CHARS = 255

metadata = MetaData()

#: What a served-card row records about whether the clinician saw it (per-topic rollout, suppression).
DISPOSITION_SHOWN = "shown"  # returned to the EHR
DISPOSITION_SILENT = "silent"  # topic in silent rollout: evaluated and recorded, not returned
DISPOSITION_SUPPRESSED = "suppressed"  # not returned: overridden recently for this patient (suppression rule)
DISPOSITIONS = (DISPOSITION_SHOWN, DISPOSITION_SILENT, DISPOSITION_SUPPRESSED)

served_cards = Table(
    "served_cards",
    metadata,
    Column("card_uuid", String(64), primary_key=True),
    Column("service_id", String(100), nullable=False),
    Column("hook", String(50), nullable=False),
    Column("hook_instance", String(200), nullable=False),
    Column("topic", String(50), nullable=False),
    Column("indicator", String(20), nullable=False),
    Column("suggestion_uuids", Text, nullable=False, default="[]"),
    Column("patient_hash", String(64)),
    Column("served_at", DateTime(timezone=True), nullable=False),
    # revision 0002: tenant binding, de-duplication, rollout
    Column("issuer", String(MAX_ISS_CHARS)),  # the authenticated client (None: authentication off)
    Column("tenant", String(MAX_TENANT_CHARS)),
    Column("presentation_key", String(64)),  # same topic + order + encounter/hook instance = one presentation
    Column("disposition", String(20), nullable=False, server_default=DISPOSITION_SHOWN),
    Index("ix_served_cards_served_at", "served_at"),
    Index("ix_served_cards_topic", "topic"),
    Index("ix_served_cards_presentation_key", "presentation_key"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(100), nullable=False),
    Column("card_uuid", String(200), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("accepted_suggestions", Text, nullable=False, default="[]"),
    Column("override_system", String(300)),
    Column("override_code", String(100)),
    Column("override_display", String(300)),
    Column("user_comment", Text),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),  # the client's, kept as data
    Column("received_at", DateTime(timezone=True), nullable=False),  # the server's: orders the answers
    Column("known_card", Boolean, nullable=False),
    Column("flag", String(100)),
    # revision 0002: who sent it
    Column("issuer", String(MAX_ISS_CHARS)),
    Column("tenant", String(MAX_TENANT_CHARS)),
    Index("ix_feedback_card_uuid", "card_uuid"),
    Index("ix_feedback_received_at", "received_at"),
)

#: JWT ``jti`` replay cache shared by every worker and instance (cds_service.auth's SqlReplayCache).
jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("issuer", String(MAX_ISS_CHARS), primary_key=True),
    Column("jti", String(MAX_JTI_CHARS), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_jwt_replay_expires_at", "expires_at"),
)

#: Daily aggregates that `cds-service purge` keeps when it deletes old served-card and feedback rows,
#: so long-term analytics survive retention. One row per UTC day (of the presentation's first card),
#: service, topic and disposition.
analytics_daily = Table(
    "analytics_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("service_id", String(100), primary_key=True),
    Column("topic", String(50), primary_key=True),
    Column("disposition", String(20), primary_key=True),
    Column("served", Integer, nullable=False),  # raw served-card rows
    Column("presentations", Integer, nullable=False),  # after de-duplication
    Column("accepted", Integer, nullable=False),
    Column("overridden", Integer, nullable=False),
)

analytics_reasons_daily = Table(
    "analytics_reasons_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("service_id", String(100), primary_key=True),
    Column("topic", String(50), primary_key=True),
    Column("reason_key", String(64), primary_key=True),  # sha256 of system|code|display (nullable parts)
    Column("override_system", String(300)),
    Column("override_code", String(100)),
    Column("override_display", String(300)),
    Column("count", Integer, nullable=False),
)

#: Suppression after an override (off unless the site configures it): the topic is not shown again
#: for this patient (keyed HMAC, never the id) until ``until``.
suppressions = Table(
    "suppressions",
    metadata,
    Column("patient_hash", String(64), primary_key=True),
    Column("topic", String(50), primary_key=True),
    Column("until", DateTime(timezone=True), nullable=False),
    Column("reason_code", String(100)),
    Index("ix_suppressions_until", "until"),
)
