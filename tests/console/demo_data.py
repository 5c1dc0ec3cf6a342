"""Synthetic feedback history for the analytics screenshots and tests: deterministic, no patients.

Served cards and feedback are written through the real Store methods (the same rows the hook and
feedback endpoints write), spread over past weeks with per-topic acceptance tendencies, so the
charts in docs/screenshots show what a few months of use look like.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, time, timedelta

from cds_service.cards import CardCatalog, default_cards_dir
from cds_service.store import ServedCard, Store

# (service id, hook, topic, indicator, cards per week, P(accepted), P(overridden))
PROFILE = (
    ("lbp-imaging-order-select", "order-select", "imaging-not-indicated", "warning", 9, 0.45, 0.35),
    ("lbp-patient-view", "patient-view", "self-management", "info", 12, 0.25, 0.05),
    ("lbp-patient-view", "patient-view", "axspa-referral", "warning", 3, 0.55, 0.25),
    ("lbp-patient-view", "patient-view", "axspa-hla-b27", "info", 2, 0.6, 0.15),
    ("lbp-patient-view", "patient-view", "red-flag", "warning", 3, 0.3, 0.2),
    ("lbp-imaging-order-select", "order-select", "repeat-imaging", "warning", 2, 0.4, 0.45),
    ("lbp-imaging-order-sign", "order-sign", "imaging-not-indicated", "warning", 3, 0.35, 0.5),
    ("lbp-patient-view", "patient-view", "cauda-equina", "critical", 1, 0.7, 0.1),
)
COMMENTS = {
    "failed-conservative-care": "Eight weeks of physiotherapy elsewhere, not in our record.",
    "red-flag-not-documented": "Night pain and weight loss reported today; documenting now.",
    "surgical-planning": "Spine surgeon requested pre-operative MRI.",
    "patient-specific": "Patient travelling abroad next month; imaging now agreed with her.",
    "already-referred": "Seen by rheumatology at the university hospital in March.",
    "alternative-diagnosis": "Symptoms explained by hip osteoarthritis.",
}


def seed_history(store: Store, weeks: int = 12, today: date | None = None, seed: int = 20261121) -> int:
    """Write *weeks* of served cards and feedback ending today; returns the number of cards."""
    rng = random.Random(seed)
    today = today or datetime.now(UTC).date()
    catalog = CardCatalog.load(default_cards_dir())
    total = 0
    for week in range(weeks, 0, -1):
        week_start = today - timedelta(days=7 * week - 1)
        growth = 0.6 + 0.4 * (weeks - week) / max(weeks - 1, 1)  # adoption grows over the period
        for service_id, hook, topic, indicator, per_week, p_accept, p_override in PROFILE:
            count = max(0, round(per_week * growth + rng.uniform(-1.5, 1.5)))
            for _ in range(count):
                served_at = datetime.combine(week_start + timedelta(days=rng.randrange(7)), time(8), tzinfo=UTC) \
                    + timedelta(minutes=rng.randrange(600))
                if served_at.date() > today:
                    continue
                card_uuid = str(uuid.UUID(int=rng.getrandbits(128)))
                suggestion = str(uuid.UUID(int=rng.getrandbits(128)))
                store.record_served(
                    [ServedCard(card_uuid, service_id, hook, f"demo-{card_uuid}", topic, indicator, (suggestion,))],
                    None, served_at,
                )
                total += 1
                draw = rng.random()
                answered = served_at + timedelta(minutes=rng.randrange(1, 30))
                if draw < p_accept:
                    item = {"card": card_uuid, "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion}],
                            "outcomeTimestamp": answered.isoformat()}
                elif draw < p_accept + p_override:
                    reasons = catalog.cards[topic].override_reasons
                    reason = reasons[rng.randrange(len(reasons))] if reasons else None
                    item = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": answered.isoformat()}
                    if reason:
                        override: dict[str, object] = {"reason": dict(reason)}
                        if reason["code"] in COMMENTS and rng.random() < 0.35:
                            override["userComment"] = COMMENTS[reason["code"]]
                        item["overrideReason"] = override
                else:
                    continue
                store.record_feedback(service_id, [item], answered)
    return total
