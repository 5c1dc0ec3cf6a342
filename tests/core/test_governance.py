"""Issue 17 items 1, 5, 6: per-topic rollout (silent/off), suppression after an override, and the
rough edges: production refuses an unmigrated schema; `cds-service evaluate` prints only the answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from cds_service import cli
from cds_service.analytics import Period, build_report
from cds_service.errors import SettingsError
from cds_service.tables import served_cards, suppressions

REPO = Path(__file__).resolve().parents[2]
AXSPA_REQUEST = REPO / "fixtures" / "requests" / "patient-view-axspa-four-criteria-prefetch.json"
PV = "lbp-patient-view"
HASH_KEY = "test-patient-hash-key-0123456789abcdef"


def site_config(tmp_path: Path, **sections) -> Path:
    path = tmp_path / f"site-{len(list(tmp_path.glob('site-*')))}.yaml"
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


def request_body() -> dict:
    body = json.loads(AXSPA_REQUEST.read_text(encoding="utf-8"))
    body["hookInstance"] = os.urandom(8).hex() + "-hook"
    return body


def stored(app) -> list[dict]:
    app.extensions["cds"].engine.served_writer.flush()  # served-card rows are written off the request path
    with app.extensions["cds"].store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(served_cards))]


def test_default_rollout_returns_the_card(make_app) -> None:
    response = make_app().test_client().post(f"/cds-services/{PV}", json=request_body())
    assert [c["source"]["topic"]["code"] for c in response.get_json()["cards"]] == ["axspa-referral"]


def test_silent_topic_is_recorded_not_returned(make_app, tmp_path: Path) -> None:
    app = make_app(site_config=site_config(tmp_path, rollout={"axspa-referral": "silent"}))
    response = app.test_client().post(f"/cds-services/{PV}", json=request_body())
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    [row] = stored(app)
    assert (row["topic"], row["disposition"]) == ("axspa-referral", "silent")
    today = datetime.now(UTC).date().isoformat()
    [topic] = build_report(app.extensions["cds"].store.engine, Period.parse(today, today)).topics
    assert (topic.topic, topic.served, topic.silent) == ("axspa-referral", 0, 1)


def test_off_topic_is_neither_returned_nor_recorded(make_app, tmp_path: Path) -> None:
    app = make_app(site_config=site_config(tmp_path, rollout={"axspa-referral": "off"}))
    assert app.test_client().post(f"/cds-services/{PV}", json=request_body()).get_json() == {"cards": []}
    assert stored(app) == []


@pytest.mark.parametrize(("sections", "message"), [
    ({"rollout": {"no-such-topic": "silent"}}, "unknown card topic"),
    ({"rollout": {"axspa-referral": "loud"}}, "expected one of active, silent, off"),
    ({"suppression": [{"topic": "axspa-referral", "reason": "not-a-reason", "days": 9}]}, "not an override reason"),
    ({"suppression": [{"topic": "axspa-referral", "reason": "patient-declined", "days": 0}]}, "days"),
    ({"suppression": [{"topic": "axspa-referral", "reason": "patient-declined"}]}, "topic, reason, days"),
])
def test_bad_governance_configuration_fails_at_start_naming_the_entry(make_app, tmp_path, sections, message) -> None:
    with pytest.raises(SettingsError, match=message):
        make_app(site_config=site_config(tmp_path, **sections), patient_hash_key=HASH_KEY)


def test_suppression_needs_the_patient_hash_key(make_app, tmp_path: Path) -> None:
    config = site_config(tmp_path, suppression=[{"topic": "axspa-referral", "reason": "patient-declined", "days": 9}])
    with pytest.raises(SettingsError, match="CDS_PATIENT_HASH_KEY"):
        make_app(site_config=config)


def _override(client, card: dict, reason: str) -> None:
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z",
            "overrideReason": {"reason": next(r for r in card["overrideReasons"] if r["code"] == reason)}}
    response = client.post(f"/cds-services/{PV}/feedback", json={"feedback": [item]})
    assert response.status_code == 200, response.get_json()


def test_suppression_after_an_override_expires(make_app, tmp_path: Path) -> None:
    config = site_config(tmp_path, suppression=[
        {"topic": "axspa-referral", "reason": "already-referred", "days": 90}])
    app = make_app(site_config=config, patient_hash_key=HASH_KEY)
    client = app.test_client()
    engine = app.extensions["cds"].engine
    [card] = client.post(f"/cds-services/{PV}", json=request_body()).get_json()["cards"]
    _override(client, card, "patient-declined")  # a reason without a rule: nothing suppressed
    assert len(client.post(f"/cds-services/{PV}", json=request_body()).get_json()["cards"]) == 1
    [card] = client.post(f"/cds-services/{PV}", json=request_body()).get_json()["cards"]
    _override(client, card, "already-referred")
    now = datetime.now(UTC)
    app.extensions["cds"].engine.served_writer.flush()
    # within 90 days: withheld, and recorded as suppressed
    assert client.post(f"/cds-services/{PV}", json=request_body()).get_json() == {"cards": []}
    inside = engine.invoke(PV, request_body(), now=now + timedelta(days=89))
    assert inside.decisions == () and [d for _, d in inside.withheld] == ["suppressed"]
    # after 90 days: shown again
    later = engine.invoke(PV, request_body(), now=now + timedelta(days=91))
    assert [d.topic for d in later.decisions] == ["axspa-referral"]
    with app.extensions["cds"].store.engine.connect() as conn:
        [rule] = conn.execute(sa.select(suppressions)).all()
    assert rule.reason_code == "already-referred" and rule.patient_hash != "p1"
    dispositions = sorted(r["disposition"] for r in stored(app))
    assert dispositions.count("suppressed") == 2 and dispositions.count("shown") == 4


def test_suppression_is_off_by_default(make_app) -> None:
    app = make_app(patient_hash_key=HASH_KEY)
    client = app.test_client()
    [card] = client.post(f"/cds-services/{PV}", json=request_body()).get_json()["cards"]
    _override(client, card, "already-referred")
    assert len(client.post(f"/cds-services/{PV}", json=request_body()).get_json()["cards"]) == 1


def test_serve_refuses_an_unmigrated_production_database(tmp_path: Path, monkeypatch, capsys) -> None:
    for name in [k for k in os.environ if k.startswith("CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CDS_ENV", "production")
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CDS_AUTH_MODE", "off")
    assert cli.main(["serve"]) == 2
    assert "cds-service migrate" in capsys.readouterr().err


def test_evaluate_prints_only_the_answer_and_creates_no_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "cds_service.cli", "evaluate", str(AXSPA_REQUEST)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [c["source"]["topic"]["code"] for c in json.loads(done.stdout)["cards"]] == ["axspa-referral"]
    assert done.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no ./data, no database
