"""Card presentation, spec section 8 (rev 2): compact by default, full tables behind the site setting
`card_detail: full`, summaries within 140 characters, status in words (no emoji), and override reasons
taken from the one shipped override-reason CodeSystem.

Every card of every fixture patient is rendered from the clinical engine's real Decisions in both modes.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from cds_service.cards import OVERRIDE_REASON_SYSTEM, CardCatalog, CardFileError, card_detail_setting
from cds_service.clinical import evaluate
from cds_service.clinical.knowledge import FHIR_DIR, Knowledge
from cds_service.clinical.model import EvaluationInput, PatientRecord
from cds_service.tooling.fixtures import load_manifest

from .conftest import CARDS_DIR, REPO, decision

MANIFEST = load_manifest(REPO / "fixtures")
NOW = datetime.now(UTC)
# Pictographs, dingbats (check marks, crosses), geometric/misc symbols, variation selectors, and the
# question/exclamation ornaments: anything that needs an emoji font to show.
EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\u25a0-\u25ff\ufe0e\ufe0f\u2049\u203c]"
)
TABLE_HEADER = "| Status | Criterion | Patient data |"
COMPACT_LINE = re.compile(r"^- \*\*(Met|Not met|Not documented — ask):\*\* \S", re.M)


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    return Knowledge.load(None)


@pytest.fixture(scope="module")
def full_site_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("site") / "site.yaml"
    path.write_text("card_detail: full\nthresholds:\n  fever_window_days: 14\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def catalogs(full_site_config: Path) -> dict[str, CardCatalog]:
    return {
        "default": CardCatalog.load(CARDS_DIR, strict=True),
        "full": CardCatalog.load(CARDS_DIR, strict=True, site_config=full_site_config),
    }


def fixture_decisions(knowledge: Knowledge):
    for spec in MANIFEST.fixtures:
        fixture = spec.load(NOW.date())
        record = PatientRecord(
            patient_id=fixture.patient_id,
            patient=fixture.patient,
            resources=tuple(r for r in fixture.resources if r["resourceType"] != "Patient"),
            draft_orders=tuple(fixture.orders),
            selections=spec.selected,
        )
        for hook in ["patient-view", "order-select", "order-sign"] if spec.orders else ["patient-view"]:
            for d in evaluate(EvaluationInput(hook, record, NOW), knowledge):
                yield spec.slug, hook, d, record


def test_every_fixture_card_is_compact_by_default_and_full_when_configured(catalogs, knowledge) -> None:
    seen_topics: set[str] = set()
    count = 0
    for slug, hook, d, record in fixture_decisions(knowledge):
        where = (slug, hook, d.topic)
        compact = catalogs["default"].render(d, record)
        full = catalogs["full"].render(d, record)
        assert TABLE_HEADER not in compact["detail"], where
        assert "**Guidance:**" not in compact["detail"], where
        assert COMPACT_LINE.search(compact["detail"]), where
        assert TABLE_HEADER in full["detail"], where
        assert len(full["detail"]) > len(compact["detail"]), where
        assert compact["summary"] == full["summary"], where
        # compact: each state at most one line
        for state in ("Met", "Not met", "Not documented — ask"):
            assert compact["detail"].count(f"- **{state}:**") <= 1, where
        seen_topics.add(d.topic)
        count += 1
    assert count > 100
    assert {"self-management", "chronic-management", "axspa-referral", "cauda-equina"} <= seen_topics


def test_every_fixture_summary_within_140_and_no_emoji_anywhere(catalogs, knowledge) -> None:
    for slug, hook, d, record in fixture_decisions(knowledge):
        for catalog in catalogs.values():
            card = catalog.render(d, record)
            where = (slug, hook, d.topic, card["summary"])
            assert len(card["summary"]) <= 140, where
            assert "…" not in card["summary"], where
            text = json.dumps(card, ensure_ascii=False)
            assert not EMOJI.search(text), (where, EMOJI.findall(text))


@pytest.mark.parametrize("mode", ["compact", "full"])
def test_sample_cards_have_no_emoji(catalogs, mode) -> None:
    catalog = catalogs["default"]
    for topic in catalog.cards:
        card = catalog.render(decision(catalog, topic), detail=mode)
        assert not EMOJI.search(card["detail"] + card["summary"]), topic


def test_card_files_and_partials_contain_no_emoji() -> None:
    for path in sorted(CARDS_DIR.glob("*.yaml")):
        assert not EMOJI.search(path.read_text(encoding="utf-8")), path.name


def test_card_override_codes_are_a_subset_of_the_codesystem(catalogs) -> None:
    """Read independently of the loader: the raw card files against the shipped CodeSystem."""
    codesystem = json.loads((FHIR_DIR / "CodeSystem-override-reason.json").read_text(encoding="utf-8"))
    shipped = {c["code"]: c["display"] for c in codesystem["concept"]}
    assert codesystem["count"] == len(shipped)
    offered: set[str] = set()
    for path in sorted(CARDS_DIR.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for item in raw.get("overrideReasons") or []:
            code = item if isinstance(item, str) else item["code"]
            assert code in shipped, f"{path.name} offers {code!r}, not in the override-reason CodeSystem"
            offered.add(code)
    # and the rendered cards carry the CodeSystem's display, never a second wording
    for catalog in catalogs.values():
        for topic in catalog.cards:
            for reason in catalog.render(decision(catalog, topic)).get("overrideReasons", []):
                assert reason["system"] == OVERRIDE_REASON_SYSTEM
                assert reason["display"] == shipped[reason["code"]]
    # the examples now use one code each
    assert "patient-declines" not in offered and "already-under-rheumatology" not in offered
    assert {"patient-declined", "already-referred"} <= offered


def test_a_card_offering_an_unknown_override_code_stops_the_start(tmp_path: Path) -> None:
    import shutil

    cards = tmp_path / "cards"
    shutil.copytree(CARDS_DIR, cards)
    path = cards / "red-flag.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["overrideReasons"].append("already-under-rheumatology")
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CardFileError, match="not in the override-reason CodeSystem"):
        CardCatalog.load(cards)


def test_card_detail_setting_from_site_config(tmp_path: Path) -> None:
    assert card_detail_setting(None) == "compact"
    site = tmp_path / "site.yaml"
    site.write_text("thresholds:\n  fever_window_days: 10\n", encoding="utf-8")
    assert card_detail_setting(site) == "compact"
    site.write_text("card_detail: full\n", encoding="utf-8")
    assert card_detail_setting(site) == "full"
    Knowledge.load(site)  # the knowledge loader accepts the presentation key in the same file
    site.write_text("card_detail: tables\n", encoding="utf-8")
    with pytest.raises(CardFileError, match="card_detail"):
        card_detail_setting(site)
    with pytest.raises(CardFileError, match="card_detail"):
        CardCatalog.load(CARDS_DIR, site_config=site)


def test_family_history_row_names_the_relative_and_the_condition(catalogs) -> None:
    from cds_service.clinical.model import Criterion, Evidence, State

    catalog = catalogs["default"]
    base = decision(catalog, "axspa-referral")
    family = Criterion(
        "nice-family-history",
        State.MET,
        (Evidence("FamilyMemberHistory/f1", "Psoriatic arthritis (SNOMED 33339001)", None, "relationship MTH"),),
    )
    d = type(base)(**{**base.__dict__, "criteria": (*base.criteria, family)})
    compact = catalog.render(d)["detail"]
    assert "a first-degree relative with spondyloarthritis (mother: psoriatic arthritis)" in compact


def test_cauda_equina_summary_does_not_repeat_itself(catalogs) -> None:
    catalog = catalogs["default"]
    ces = [{"id": "cauda-equina-syndrome", "category": "cauda-equina", "display": "Cauda equina syndrome"}]
    card = catalog.render(decision(catalog, "cauda-equina", cauda_equina_features=ces))
    assert card["summary"] == "Possible cauda equina syndrome: emergency assessment and urgent MRI"
    assert card["summary"].lower().count("cauda equina syndrome") == 1
    both = [*ces, {"id": "saddle-anaesthesia", "category": "cauda-equina", "display": "Saddle anaesthesia"}]
    summary = catalog.render(decision(catalog, "cauda-equina", cauda_equina_features=both))["summary"]
    assert summary == "Possible cauda equina syndrome (saddle anaesthesia): emergency assessment and urgent MRI"


def test_every_red_flag_question_and_first_degree_relative_has_words() -> None:
    from cds_service.cards import load_labels
    from cds_service.clinical.facts.history import FIRST_DEGREE
    from cds_service.clinical.self_management import RED_FLAG_QUESTIONS

    labels = load_labels(CARDS_DIR)
    assert set(RED_FLAG_QUESTIONS) <= set(labels["red-flag-questions"])
    assert set(FIRST_DEGREE) <= set(labels["relatives"])
