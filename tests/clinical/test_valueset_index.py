"""Knowledge.valuesets_matching answers "which value sets hold this concept" exactly as match() does.

The facts skip, for each Condition and Observation, the value sets that do not hold its code (one set
lookup instead of a match() per value set: builder.coded). That is only sound if a value set is left
out exactly when its match() finds nothing. Checked here for every value set against the codes of every
fixture chart and against concepts made to probe the edges of match(): each listed code as written and
re-spelt, ICD-10 is-a children, other systems, non-string codes, malformed codings. Then every fixture
patient's facts are built with the index and without it (every set "held", so match() decides alone).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from cds_service.clinical.facts import build_facts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import PatientRecord
from cds_service.tooling.fixtures import load_manifest

TODAY = date(2026, 11, 30)


def _fixture_charts() -> list[list[dict[str, Any]]]:
    return [spec.load(shift_to=TODAY).resources for spec in load_manifest().fixtures]


CHARTS = _fixture_charts()


def _probe_concepts(knowledge: Knowledge) -> list[Any]:
    concepts: list[Any] = [None, "x", [], {}, {"coding": None}, {"coding": "x"}, {"coding": [None, 3, "x"]},
                           {"coding": [{"system": None, "code": "8310-5"}]},
                           {"coding": [{"system": "http://loinc.org", "code": 8310}]},
                           {"coding": [{"system": "http://loinc.org"}]}, {"text": "back pain"}]
    for vs_id in knowledge.valueset_ids:
        vs = knowledge.valueset(vs_id)
        for system, code in list(vs.token_codes)[:40]:
            concepts += [
                {"coding": [{"system": system, "code": code}]},
                {"coding": [{"system": system, "code": code.lower()}]},
                {"coding": [{"system": system, "code": f" {code} "}]},
                {"coding": [{"system": system, "code": code.replace(".", "")}]},
                {"coding": [{"system": system + "/", "code": code}]},
                {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.90", "code": code}]},
                {"coding": [{"system": "http://example.org/other", "code": code}, {"system": system, "code": code}]},
            ]
        for system, prefixes in vs.prefixes.items():
            for prefix in list(prefixes)[:10]:
                concepts += [{"coding": [{"system": system, "code": prefix + suffix}]}
                             for suffix in ("", ".1", "9", "X")]
    for chart in CHARTS:
        concepts += [r.get("code") for r in chart if "code" in r]
    return concepts


def test_a_value_set_is_listed_exactly_when_match_finds_a_coding() -> None:
    knowledge = Knowledge.load()
    concepts = _probe_concepts(knowledge)
    assert len(concepts) > 1_000
    held = 0
    for _ in range(2):  # the second round answers from the per-code memo
        for concept in concepts:
            listed = knowledge.valuesets_matching(concept)
            for vs_id in knowledge.valueset_ids:
                found = knowledge.match(vs_id, concept) is not None
                assert (vs_id in listed) is found, (vs_id, concept)
                held += found
    assert held > 500  # the probes do reach the value sets


def _record(chart: list[dict[str, Any]]) -> PatientRecord:
    patient = next(r for r in chart if r["resourceType"] == "Patient")
    return PatientRecord(patient_id=patient["id"], patient=patient,
                         resources=tuple(r for r in chart if r["resourceType"] != "Patient"))


@pytest.mark.parametrize("chart", CHARTS, ids=[spec.slug for spec in load_manifest().fixtures])
def test_facts_are_the_same_with_and_without_the_index(chart: list[dict[str, Any]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    knowledge = Knowledge.load()
    now = datetime(2026, 11, 30, 10, 30)
    indexed = build_facts(_record(chart), knowledge, now)
    every_set = frozenset(knowledge.valueset_ids)
    monkeypatch.setattr(knowledge, "valuesets_matching", lambda _concept: every_set)
    assert build_facts(_record(chart), knowledge, now) == indexed
