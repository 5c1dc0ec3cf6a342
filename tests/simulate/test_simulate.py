"""Issue 17 item 3: `cds-service simulate` over a FHIR Bulk Data export.

The figures are checked against the fixtures' expected cards (fixtures/manifest.yaml, the expectations
the validation report checks): the fixtures written as an NDJSON export, and a generated population of
10 000 patients drawn from them under new ids, whose expected figures follow from the draw.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
import yaml

from cds_service import cli
from cds_service.tooling.fixtures import load_manifest
from cds_service.tooling.simulate import simulate
from cds_service.tooling.simulate.export import ExportError, export_fixtures, generate_population, read_export

DAY = date(2026, 11, 30)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CDS_ENV", "development")


def expected_per_fixture() -> dict[str, Counter]:
    """slug → Counter of (hook, topic) the manifest expects: patient-view, and each order alone on order-select."""
    out = {}
    for spec in load_manifest().fixtures:
        counts = Counter(("patient-view", t) for t in spec.expected("patient-view"))
        counts.update(("order-select", t) for order in spec.orders for t in order.expect)
        out[spec.slug] = counts
    return out


def expected_total(draw: Counter | None = None) -> Counter:
    total: Counter = Counter()
    for slug, counts in expected_per_fixture().items():
        for key, n in counts.items():
            total[key] += n * (draw[slug] if draw is not None else 1)
    return total


def test_fixture_export_gives_the_expected_cards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export_fixtures(tmp_path / "export", DAY)
    out = tmp_path / "out"
    assert cli.main(["simulate", str(tmp_path / "export"), "--on", DAY.isoformat(), "--workers", "2",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr()
    patients = len(load_manifest().fixtures)
    assert f"{patients} patients" in printed.out
    assert "patient/s" in printed.err  # the progress bar is on stderr
    figures = json.loads((out / "simulation.json").read_text())
    got = Counter({(r["hook"], r["topic"]): r["cards"] for r in figures["topics"] if r["cards"]})
    assert got == expected_total()
    assert figures["patients"] == patients and figures["errors"] == {}
    assert sum(figures["cardsPerPatient"].values()) == patients
    per_patient = Counter(sum(c.values()) for c in expected_per_fixture().values())
    assert {int(k): v for k, v in figures["cardsPerPatient"].items()} == dict(per_patient)
    svg = (out / "simulation.svg").read_text()
    assert svg.startswith("<svg") and "imaging-not-indicated" in svg
    # nothing about any patient: no id, no fixture name, no resource content
    everything = printed.out + printed.err + "".join(p.read_text() for p in out.iterdir())
    for patient_id in read_export(tmp_path / "export").patients:
        assert patient_id not in everything
    assert "Practitioner/" not in everything and "birthDate" not in everything


def test_silent_topics_are_counted_as_would_have_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_fixtures(tmp_path / "export", DAY)
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({"rollout": {"imaging-not-indicated": "silent", "self-management": "off"}}))
    monkeypatch.setenv("CDS_SITE_CONFIG", str(config))
    result = simulate(tmp_path / "export", DAY, workers=2, progress=False)
    expected = expected_total()
    rows = {(r["hook"], r["topic"]): r for r in result.rows()}
    silent = rows[("order-select", "imaging-not-indicated")]
    assert (silent["mode"], silent["cards"], silent["silentWouldHaveShown"]) == (
        "silent", 0, expected[("order-select", "imaging-not-indicated")])
    assert ("patient-view", "self-management") not in rows  # off: neither shown nor counted
    assert rows[("order-select", "cauda-equina")]["cards"] == expected[("order-select", "cauda-equina")]


def test_bad_exports_are_refused_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert cli.main(["simulate", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no *.ndjson files" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "a"}\n{not json\n')
    with pytest.raises(ExportError, match="Patient.ndjson line 2"):
        read_export(bad)


@pytest.mark.population
def test_a_generated_population_of_ten_thousand(tmp_path: Path) -> None:
    """At least 10 000 patients through the parallel workers: every figure as the draw predicts."""
    draw = generate_population(tmp_path / "export", 10_000, DAY, seed=17)
    assert sum(draw.values()) == 10_000
    result = simulate(tmp_path / "export", DAY, workers=2, progress=False)
    assert result.tally.patients == 10_000 and not result.tally.errors
    got = Counter({key: n for key, n in result.tally.shown.items() if n})
    assert got == expected_total(draw)
    per_patient: Counter = Counter()
    for slug, counts in expected_per_fixture().items():
        per_patient[sum(counts.values())] += draw[slug]
    assert dict(result.tally.cards_per_patient) == dict(per_patient)
