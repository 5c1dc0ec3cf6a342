"""Override reasons are grouped by code (issue 13): an EHR echoing another display for the same code
must not split the count. SQLite and PostgreSQL, like the other analytics tests."""

from __future__ import annotations

from cds_service.analytics import Period, build_report
from cds_service.store import ServedCard, Store

from .test_analytics import PV, REASON_SYSTEM, at


def test_same_code_with_different_displays_is_one_reason(database_url: str) -> None:
    store = Store(database_url)
    try:
        store.create_schema()
        for i, display in enumerate(["Patient declined", "patient declined referral", None]):
            card = f"c{i}"
            when = f"2026-03-0{i + 3}T10:00:00"
            store.record_served([ServedCard(card, PV, "patient-view", f"h-{card}", "axspa-referral", "warning", ())],
                                "patient-1", at(when))
            reason = {"system": REASON_SYSTEM, "code": "patient-declined"}
            if display:
                reason["display"] = display
            item = {"card": card, "outcome": "overridden", "outcomeTimestamp": when + "Z",
                    "overrideReason": {"reason": reason}}
            store.record_feedback(PV, [item], at(when))
        report = build_report(store.engine, Period.parse("2026-03-02", "2026-03-15"), None, {})
        [topic] = report.topics
        assert [(r.code, r.system, r.count) for r in topic.reasons] == [("patient-declined", REASON_SYSTEM, 3)]
        assert topic.reasons[0].display in {"Patient declined", "patient declined referral"}
    finally:
        store.engine.dispose()
