"""The hook engine: one CDS Hooks request in, one answer out, for every caller.

The HTTP adapter (``hooks_api``), ``cds-service evaluate``, the validation report, the console's
review sheet and the in-process benchmark all call :class:`HookEngine`; none of them builds a
second Flask app. The engine owns the protocol steps that do not depend on HTTP: request
validation, prefetch resolution (fetching what is missing), the ``PatientRecord``, the clinical
evaluation, card rendering and the served-card record. What it returns says everything the caller
needs to answer and to log: status, body, the Decisions and the served-card rows built from them.

Errors the client caused are raised as :class:`~cds_service.protocol.RequestError` (the adapter
maps them to JSON); a 412 for data that cannot be had is an outcome, not an exception.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson

from .cards import prune
from .clinical import build_facts
from .clinical.model import Decision, EvaluationInput, PatientRecord
from .content_cache import ContentCache, content_key
from .metrics import CARDS_SERVED, FEEDBACK, PREFETCH_MISSING
from .prefetch import resolve
from .protocol import RequestError, validate_feedback, validate_request
from .registry import ServiceDefinition
from .served_writer import ServedWriter
from .store import ServedCard, StoreUnavailable
from .tables import DISPOSITION_SHOWN

if TYPE_CHECKING:  # the runtime builds the engine: no import at run time
    from .runtime import Runtime

log = logging.getLogger("cds_service.engine")

#: PatientRecord fields the facts never read (the order logic reads them per call): not in the cache key
_NOT_FACTS = frozenset({"draft_orders", "selections"})


@dataclass(frozen=True)
class HookOutcome:
    """The answer to one hook request and what was learnt while computing it."""

    service: ServiceDefinition
    status: int  # 200, or 412 when required data could not be had
    body: dict[str, Any]
    decisions: tuple[Decision, ...] = ()  # the Decisions answered (shown)
    served: tuple[ServedCard, ...] = ()  # served-card rows: shown, and withheld with their disposition
    log_fields: dict[str, Any] = field(default_factory=dict)
    #: Decisions evaluated but not returned: (decision, "silent" | "suppressed") — cds_service.rollout
    withheld: tuple[tuple[Decision, str], ...] = ()

    @property
    def cards(self) -> list[dict[str, Any]]:
        return list(self.body.get("cards", []))


@dataclass(frozen=True)
class FeedbackOutcome:
    status: int  # 200, or 503 when the store is unavailable
    body: dict[str, Any]
    log_fields: dict[str, Any] = field(default_factory=dict)


class HookEngine:
    """Built once per process around the start-up :class:`Runtime`; thread-safe (no per-call state)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.timezone = ZoneInfo(runtime.settings.timezone)
        #: facts built from identical patient data, shared by the calls of one ordering session (content_cache.py)
        self.facts_cache = ContentCache()
        #: rendered cards by Decision (content_cache.py)
        self.card_cache = ContentCache(max_entries=512)
        #: served-card rows written by one background thread per process (served_writer.py)
        self.served_writer = ServedWriter(self._write_served)

    def close(self) -> None:
        """Write every queued served-card row (also done at interpreter exit)."""
        self.served_writer.close()

    # ---- discovery --------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {"services": [s.discovery() for s in self.runtime.services.values()]}

    def service(self, service_id: str) -> ServiceDefinition:
        service = self.runtime.services.get(service_id)
        if service is None:
            raise RequestError(404, f"no CDS service with id {service_id!r}; see GET /cds-services", "id",
                               "unknown-service")
        return service

    def service_for_hook(self, hook: str | None) -> ServiceDefinition:
        for service in self.runtime.services.values():
            if service.hook == hook:
                return service
        raise RequestError(404, f"no CDS service handles hook {hook!r}", "hook", "unknown-hook")

    def now(self) -> datetime:
        """The evaluation instant in the site's time zone (CDS_TIMEZONE): "today" is its date."""
        return self.runtime.settings.now()

    def as_site_time(self, when: datetime | date | None) -> datetime:
        """*when* as an aware datetime in the site zone; a bare date means that day's noon."""
        if when is None:
            return self.now()
        if isinstance(when, datetime):
            return when.astimezone(self.timezone) if when.tzinfo else when.replace(tzinfo=self.timezone)
        return datetime(when.year, when.month, when.day, 12, tzinfo=self.timezone)

    # ---- invocation -------------------------------------------------------------------------

    def invoke(
        self,
        service_id: str,
        body: Any,
        auth: Any = None,
        *,
        now: datetime | date | None = None,
        deadline: float | None = None,
        record: bool = True,
    ) -> HookOutcome:
        """Answer one hook request.

        *auth* is the caller's ``AuthContext`` (its per-issuer FHIR allowlist applies); *deadline* a
        ``time.monotonic()`` instant by which every FHIR call must be done (default: now + the
        configured deadline); *record* False for evaluations that are not clinical use (validation,
        review, simulation): nothing is written to the served-card store.
        """
        rt = self.runtime
        service = self.service(service_id)
        validate_request(body, service.hook)
        started = time.monotonic()
        when = self.as_site_time(now)
        fields: dict[str, Any] = {"service": service.id, "hook": service.hook, "hook_instance": body["hookInstance"]}

        context = body["context"]
        allowlist = auth.fhir_allowlist if auth is not None and auth.fhir_allowlist else rt.settings.fhir_allowlist
        resolved = resolve(
            service.prefetch,
            body,
            rt.fhir,
            allowlist,
            deadline=deadline if deadline is not None else started + rt.settings.deadline_seconds,
            allow_open_servers=rt.settings.allow_open_fhir_servers,
            follow_paging={key: key not in service.first_page_only for key in service.prefetch},
            now=when,
            windows=service.windows,
        )
        missing_keys = [m.key for m in resolved.missing]
        for key in missing_keys:
            PREFETCH_MISSING.labels(key).inc()
        fields.update(fetched_keys=resolved.fetched_keys, missing_keys=missing_keys)
        if resolved.missing and rt.settings.on_missing_data == "412":
            return HookOutcome(
                service,
                412,
                {
                    "error": "prefetch-unavailable",
                    "message": "required FHIR data is neither in prefetch nor obtainable from the FHIR server",
                    "missing": [m.as_json() for m in resolved.missing],
                },
                log_fields=fields,
            )

        record_ = PatientRecord(
            patient_id=context["patientId"],
            patient=resolved.patient(),
            resources=tuple(resolved.all_resources()),
            draft_orders=tuple(entry["resource"] for entry in (context.get("draftOrders") or {}).get("entry", [])),
            selections=tuple(context.get("selections", ())),
            encounter_id=context.get("encounterId"),
            user_id=context.get("userId"),
            missing=tuple(missing_keys),
            temperatures_complete_since=resolved.temperatures_complete_since,
        )
        facts = self._facts(record_, when)
        evaluated = tuple(service.evaluate(EvaluationInput(hook=service.hook, record=record_, now=when, facts=facts)))
        shown, withheld = rt.governance.apply(evaluated, self._suppressed(evaluated, record_.patient_id, when, record))
        decisions = tuple(shown)
        cards = [self._render(decision, record_) for decision in decisions]
        rendered = [(d, self._render(d, record_), disposition) for d, disposition in withheld]
        served = tuple(
            ServedCard(
                card_uuid=card["uuid"],
                service_id=service.id,
                hook=service.hook,
                hook_instance=body["hookInstance"],
                topic=decision.topic,
                indicator=card["indicator"],
                suggestion_uuids=tuple(s["uuid"] for s in card.get("suggestions", [])),
                order_reference=decision.order_reference,
                encounter_id=record_.encounter_id,
                disposition=disposition,
            )
            for decision, card, disposition in [*((d, c, DISPOSITION_SHOWN) for d, c in zip(decisions, cards,
                                                                                           strict=True)), *rendered]
        )
        if record:
            self._record_served(served, record_.patient_id, when, auth)
        shown_cards = [c for c in served if c.disposition == DISPOSITION_SHOWN]
        fields.update(card_topics=[c.topic for c in shown_cards], card_ids=[c.card_uuid for c in shown_cards])
        if withheld:
            fields.update(withheld=[f"{c.topic}:{c.disposition}" for c in served if c.disposition != DISPOSITION_SHOWN])
        return HookOutcome(service, 200, {"cards": cards}, decisions, served, fields, tuple(withheld))

    def _facts(self, record: PatientRecord, when: datetime) -> Any:
        """PatientFacts for *record* at *when*, from the per-process cache when the same patient data
        was evaluated on the same day in the same zone a moment ago (content_cache.py). The key is every
        record field the facts read -- all of them but the draft orders and selections."""
        knowledge = self.runtime.knowledge
        try:
            key = content_key(
                {f.name: getattr(record, f.name) for f in fields(record) if f.name not in _NOT_FACTS},
                when.date().isoformat(), str(when.tzinfo),
            )
        except TypeError:  # not exactly serialisable (e.g. nested deeper than orjson writes): uncached
            return build_facts(record, knowledge, when)
        return self.facts_cache.get_or_build(key, lambda: build_facts(record, knowledge, when))

    def _render(self, decision: Decision, record: PatientRecord) -> dict[str, Any]:
        """The card for *decision*, rendered once per identical Decision and missing data (content_cache.py).

        The key leaves out the suggestions' action resources: those carry the evaluation instant
        (``authoredOn``, an id derived from it) and would make every key unique, and the card template
        never reads them. A cached card gets this call's actions, copied as ``CardCatalog.render`` copies
        them, and fresh card and suggestion uuids; tests/core/test_engine_caches.py compares every
        fixture's cards with an uncached render."""
        catalog = self.runtime.catalog
        try:
            key = content_key(
                dataclasses.replace(decision, suggestions=tuple(dataclasses.replace(s, actions=())
                                                                for s in decision.suggestions)),
                record.missing, getattr(record, "hook", None),
            )
        except TypeError:  # a parameter orjson cannot serialise exactly: render uncached
            return catalog.render(decision, record)
        card: dict[str, Any] = orjson.loads(
            self.card_cache.get_or_build(key, lambda: orjson.dumps(catalog.render(decision, record)))
        )
        suggestions = card.get("suggestions", [])
        if len(suggestions) != len(decision.suggestions):  # not the shape this relies on: no shortcut
            return catalog.render(decision, record)
        card["uuid"] = str(uuid.uuid4())
        for suggestion, spec in zip(suggestions, decision.suggestions, strict=True):
            suggestion["uuid"] = str(uuid.uuid4())
            suggestion["actions"] = prune([dict(action) for action in spec.actions])
        return card

    def _suppressed(self, decisions: tuple[Decision, ...], patient_id: str, when: datetime, record: bool) -> set[str]:
        """Topics withheld for this patient after a recent override (only where the site configured it)."""
        rt = self.runtime
        candidates = {d.topic for d in decisions} & rt.governance.suppressible_topics
        if not (record and candidates and rt.store is not None):
            return set()
        try:
            return rt.store.suppressed_topics(patient_id, candidates, when.astimezone(UTC))
        except StoreUnavailable:
            log.warning("suppression not checked: database unavailable; the cards are shown")
            return set()

    def _record_served(self, served: tuple[ServedCard, ...], patient_id: str, when: datetime, auth: Any) -> None:
        if self.runtime.store is not None and served:
            item = (served, patient_id, when.astimezone(UTC), getattr(auth, "issuer", None),
                    getattr(auth, "tenant", None))
            if self.runtime.settings.served_writes == "background":
                self.served_writer.submit(item)
            else:
                # inline (default): the row is committed before the answer leaves, so feedback sent to
                # another instance finds its card and a killed worker loses no answered card
                self._write_served([item])
        for card in served:
            if card.disposition == DISPOSITION_SHOWN:
                CARDS_SERVED.labels(card.service_id, card.topic).inc()

    def _write_served(self, batch: list[tuple[tuple[ServedCard, ...], str, datetime, str | None, str | None]]) -> None:
        """On the writer thread (or inline when its queue is full): the rows of many hook calls, one
        transaction; if that fails, each call's rows on their own, so one bad call loses only its rows."""
        store = self.runtime.store
        if store is None:
            return
        rows = [store.served_rows(served, patient_id, when, issuer=issuer, tenant=tenant)
                for served, patient_id, when, issuer, tenant in batch]
        try:
            store.insert_served([row for call in rows for row in call])
            return
        except StoreUnavailable:
            if len(batch) == 1:
                rows_failed = rows
            else:
                rows_failed = []
                for call in rows:
                    try:
                        store.insert_served(call)
                    except StoreUnavailable:
                        rows_failed.append(call)
        for call in rows_failed:
            # Cards need no database: the clinician still got them; only analytics lose these rows.
            log.warning("served cards not recorded: database unavailable",
                        extra={"card_ids": [row["card_uuid"] for row in call]})

    # ---- feedback ---------------------------------------------------------------------------

    def feedback(self, service_id: str, body: Any, auth: Any = None) -> FeedbackOutcome:
        service = self.service(service_id)
        validate_feedback(body)
        fields = {"service": service.id, "card_ids": [item["card"] for item in body["feedback"]]}
        store = self.runtime.store
        try:
            if store is None:
                raise StoreUnavailable("no feedback store in this process")
            self.served_writer.flush()  # the cards this feedback answers are in the table first
            stored = store.record_feedback(service.id, body["feedback"], datetime.now(UTC),
                                           issuer=getattr(auth, "issuer", None), tenant=getattr(auth, "tenant", None),
                                           suppression_days=self.runtime.governance.suppression)
        except StoreUnavailable:
            return FeedbackOutcome(
                503, {"error": "store-unavailable", "message": "feedback could not be stored; retry later"}, fields
            )
        for item, ack in zip(body["feedback"], stored, strict=True):
            FEEDBACK.labels(service.id, item["outcome"], ack.get("flag", "none")).inc()
        return FeedbackOutcome(200, {"feedback": stored}, fields)


def topics(outcome: HookOutcome | Mapping[str, Any]) -> list[str]:
    """The card topics of an answer, sorted (for comparisons with expected topics)."""
    if isinstance(outcome, HookOutcome):
        return sorted(d.topic for d in outcome.decisions)
    cards = outcome.get("cards", []) if isinstance(outcome, Mapping) else []
    return sorted(str(card.get("source", {}).get("topic", {}).get("code", "?")) for card in cards)
