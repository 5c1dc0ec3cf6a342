"""Loading and validating card files: everything a clinician might break fails at start-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cds_service.cards import TOPICS, CardCatalog, CardFileError

from .conftest import CARDS_DIR


def test_every_topic_has_a_card_file(catalog: CardCatalog) -> None:
    assert set(catalog.cards) == set(TOPICS)
    for topic, card in catalog.cards.items():
        assert card.path.name == f"{topic}.yaml"
        assert card.display and card.source_label


def test_imaging_not_indicated_has_the_required_override_reasons_and_links(catalog: CardCatalog) -> None:
    card = catalog.cards["imaging-not-indicated"]
    displays = {r["display"] for r in card.override_reasons}
    assert {
        "Red flag present but not yet documented",
        "Failed 6 weeks of conservative care",
        "Surgical or interventional planning",
        "Patient-specific reason",
    } <= displays
    labels = " ".join(link["label"] for link in card.links)
    for source in ("ACP 2011", "Choosing Wisely", "NICE NG59"):
        assert source in labels


def test_guidelines_named_by_the_spec_are_linked(catalog: CardCatalog) -> None:
    labels = " ".join(link["label"] for card in catalog.cards.values() for link in card.links)
    for name in (
        "ACP 2011",
        "ACP/APS 2007",
        "ACP 2017",
        "Choosing Wisely",
        "NICE NG59",
        "NICE QS155",
        "NICE NG65",
        "ACR Appropriateness Criteria",
        "EULAR 2015",
        "ASAS 2009",
        "ASAS-EULAR 2022",
    ):
        assert name in labels, name


def test_suggestion_kinds_cover_the_clinical_contract(catalog: CardCatalog) -> None:
    kinds = {
        "imaging-not-indicated": {"remove-order", "refer-physiotherapy"},
        "repeat-imaging": {"remove-order"},
        "axspa-sij-imaging": {"replace-with-sij-imaging"},
        "axspa-referral": {"refer-rheumatology", "refer-rheumatology-with-labs"},
        "axspa-hla-b27": {"order-hla-b27"},
        # rev 2 (spec section 2, step 2): an ordered study that differs from the preferred one is replaced
        "imaging-appropriate": {"replace-with-preferred-imaging"},
    }
    for topic, expected in kinds.items():
        assert expected <= set(catalog.cards[topic].suggestion_labels), topic
        assert catalog.cards[topic].selection_behavior in ("any", "at-most-one")
    for topic in ("cauda-equina", "red-flag", "self-management"):
        assert not catalog.cards[topic].suggestion_labels, f"{topic} must not suggest anything"


def _copy_cards(tmp_path: Path) -> Path:
    target = tmp_path / "cards"
    shutil.copytree(CARDS_DIR, target)
    return target


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("summary"), "summary"),
        (lambda d: d.pop("indicator"), "indicator"),
        (lambda d: d.__setitem__("indicator", "urgent"), "indicator"),
        (lambda d: d["source"].pop("label"), "source.label"),
        (lambda d: d["source"].__setitem__("url", "nice.org.uk/ng59"), "source.url"),
        (lambda d: d.__setitem__("summary", "{% if %}"), "summary"),
        (lambda d: d.__setitem__("detail", "{{ unclosed"), "detail"),
        (lambda d: d.pop("selectionBehavior"), "selectionBehavior"),
        (lambda d: d.__setitem__("selectionBehavior", "all"), "selectionBehavior"),
        (lambda d: d["overrideReasons"].append("patient-declines"), "overrideReasons[4]"),
        (lambda d: d["overrideReasons"].__setitem__(0, {"code": "patient-specific", "display": "x"}),
         "overrideReasons[0].display"),
        (
            lambda d: d["overrideReasons"].append({"system": "urn:oid:1.2.3", "code": "local"}),
            "overrideReasons[4].display",
        ),
        (lambda d: d["overrideReasons"].append(d["overrideReasons"][0]), "overrideReasons[4].code"),
        (lambda d: d["links"][0].__setitem__("url", "/relative"), "links[0].url"),
        (lambda d: d["links"][0].__setitem__("type", "iframe"), "links[0].type"),
        (lambda d: d["suggestions"]["remove-order"].pop("label"), "suggestions.remove-order.label"),
        (lambda d: d.__setitem__("topic", "imaging-maybe"), "topic"),
    ],
)
def test_invalid_card_file_names_file_and_field(tmp_path: Path, change, field: str) -> None:
    cards = _copy_cards(tmp_path)
    _edit(cards / "imaging-not-indicated.yaml", change)
    with pytest.raises(CardFileError) as info:
        CardCatalog.load(cards)
    assert info.value.path.endswith("imaging-not-indicated.yaml")
    assert info.value.field == field
    assert "imaging-not-indicated.yaml" in str(info.value) and field in str(info.value)


def test_missing_topic_file_is_refused(tmp_path: Path) -> None:
    cards = _copy_cards(tmp_path)
    (cards / "repeat-imaging.yaml").unlink()
    with pytest.raises(CardFileError, match="repeat-imaging"):
        CardCatalog.load(cards)


def test_file_name_must_match_topic(tmp_path: Path) -> None:
    cards = _copy_cards(tmp_path)
    (cards / "red-flag.yaml").rename(cards / "red-flags.yaml")
    with pytest.raises(CardFileError, match="file name"):
        CardCatalog.load(cards)


def test_template_that_fails_at_render_time_is_caught_at_load(tmp_path: Path) -> None:
    cards = _copy_cards(tmp_path)
    _edit(cards / "self-management.yaml", lambda d: d.__setitem__("detail", '{% include "no-such-partial" %}'))
    with pytest.raises(CardFileError, match="self-management.yaml: summary/detail"):
        CardCatalog.load(cards)


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    cards = _copy_cards(tmp_path)
    (cards / "red-flag.yaml").write_text("topic: [unclosed\n", encoding="utf-8")
    with pytest.raises(CardFileError, match="red-flag.yaml: \\(file\\): is not valid YAML"):
        CardCatalog.load(cards)


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CardFileError, match="card directory not found"):
        CardCatalog.load(tmp_path / "nope")


def test_sandbox_blocks_unsafe_template_code(tmp_path: Path) -> None:
    cards = _copy_cards(tmp_path)
    _edit(
        cards / "self-management.yaml",
        lambda d: d.__setitem__("summary", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    )
    with pytest.raises(CardFileError, match="self-management.yaml"):
        CardCatalog.load(cards)
