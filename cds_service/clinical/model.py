"""The contract between the clinical rules, the card renderer and the protocol layer.

Everything here is plain immutable data so that rules stay pure functions: FHIR facts in,
decisions out. Nothing in this package performs I/O or reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class State(StrEnum):
    """The three states of a criterion. "not documented" is never silently "not met"."""

    MET = "met"
    NOT_MET = "not-met"
    NOT_DOCUMENTED = "not-documented"


@dataclass(frozen=True)
class Evidence:
    """One piece of patient data behind a criterion, traceable to its FHIR resource."""

    reference: str  # "Condition/123", "QuestionnaireResponse/9#night-waking-second-half"
    text: str  # human description, e.g. "Low back pain (SNOMED 279039007)"
    date: str | None = None  # ISO date/dateTime the datum refers to
    value: str | None = None  # e.g. "12 mg/L", "positive", "true"


@dataclass(frozen=True)
class Criterion:
    """A criterion evaluated for one decision (shown as a checklist line on the card).

    Its words live in cards/labels/criteria.yaml under its id; label_params fill the label's
    placeholders (e.g. {"age": 35} for "Back pain began before age {age}")."""

    id: str  # stable id, e.g. "nice-onset-before-35"
    state: State
    evidence: tuple[Evidence, ...] = ()
    note: str | None = None  # e.g. "onset taken from recordedDate"
    label_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Citation:
    """A guideline a decision rests on."""

    id: str  # e.g. "nice-ng65"
    title: str  # e.g. "NICE NG65 Spondyloarthritis in over 16s: recognition and referral"
    version: str  # e.g. "2017"
    url: str | None = None


@dataclass(frozen=True)
class SuggestionSpec:
    """A suggestion the rule recommends; labels come from cards/, resources from clinical.orders.

    kind is one of the suggestion keys of the topic's card file (e.g. "remove-order",
    "refer-physiotherapy", "refer-rheumatology", "refer-rheumatology-with-labs",
    "order-hla-b27", "replace-with-sij-imaging").
    """

    kind: str
    actions: tuple[dict[str, Any], ...]  # CDS Hooks actions: {"type","description","resource"|"resourceId"}
    recommended: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # values for the label template


@dataclass(frozen=True)
class Decision:
    """The outcome of one rule: a card to show, with everything needed to explain it."""

    topic: str  # card-topic code (spec section 6), selects cards/<topic>.yaml
    rule: str  # rule id, e.g. "imaging.step-6"
    citations: tuple[Citation, ...]
    criteria: tuple[Criterion, ...]
    params: dict[str, Any] = field(default_factory=dict)  # template variables for summary/detail
    suggestions: tuple[SuggestionSpec, ...] = ()
    order_reference: str | None = None  # "ServiceRequest/abc": the draft order this card is about


@dataclass(frozen=True)
class PatientRecord:
    """Everything the protocol layer obtained for one hook call, as parsed JSON dicts.

    resources holds every resource from prefetch and FHIR fetches (Bundles already unpacked,
    duplicates by type/id removed). draft_orders are the context's draftOrders entries.
    missing lists prefetch keys that could not be obtained (only when partial answers are allowed).
    temperatures_complete_since (rev 2): None = the body temperatures in resources are complete for the
    whole fever window; a datetime T = they are known complete only from T to now (a "latest N" search was
    cut off and the rest of the window could not be fetched), so fever before T is not documented.
    """

    patient_id: str
    patient: dict[str, Any] | None
    resources: tuple[dict[str, Any], ...]
    draft_orders: tuple[dict[str, Any], ...] = ()
    selections: tuple[str, ...] = ()
    encounter_id: str | None = None
    user_id: str | None = None
    missing: tuple[str, ...] = ()
    temperatures_complete_since: datetime | None = None


@dataclass(frozen=True)
class EvaluationInput:
    """What a service's evaluate function receives. ``now`` is aware, in the site's zone (CDS_TIMEZONE)."""

    hook: str
    record: PatientRecord
    now: datetime
    #: PatientFacts already built from this record at this ``now`` (the hook engine's per-process cache
    #: of identical patient data); None = build them. Facts read neither draft orders nor selections.
    facts: Any = None
