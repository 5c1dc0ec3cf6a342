"""The generic Questionnaire form: rendering model, enableWhen, answers -> QuestionnaireResponse."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from werkzeug.datastructures import MultiDict

from cds_service.smart.form import (
    FormError,
    Prefill,
    build_form,
    build_response,
    canonical,
    is_enabled,
    load_questionnaire,
    new_information,
    parse_answers,
    submitted_values,
    walk,
)
from cds_service.smart.sealed import Sealer

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
CODING = {"system": "http://example.org/cs", "code": "daily", "display": "Every day"}

# A Questionnaire using every supported type, including a choice and enableWhen on it.
SYNTHETIC: dict[str, Any] = {
    "resourceType": "Questionnaire",
    "url": "http://example.org/Questionnaire/synthetic",
    "version": "2.1",
    "status": "active",
    "item": [
        {"linkId": "intro", "type": "display", "text": "Read me"},
        {
            "linkId": "g",
            "type": "group",
            "text": "Group",
            "item": [
                {"linkId": "pain", "type": "boolean", "text": "Pain?"},
                {
                    "linkId": "since",
                    "type": "date",
                    "text": "Since?",
                    "enableWhen": [{"question": "pain", "operator": "=", "answerBoolean": True}],
                },
                {
                    "linkId": "often",
                    "type": "choice",
                    "text": "How often?",
                    "answerOption": [
                        {"valueCoding": {"system": "http://example.org/cs", "code": "weekly", "display": "Every week"}},
                        {"valueCoding": CODING},
                    ],
                    "enableWhen": [{"question": "pain", "operator": "exists", "answerBoolean": True}],
                },
                {
                    "linkId": "night",
                    "type": "boolean",
                    "text": "At night?",
                    "enableBehavior": "any",
                    "enableWhen": [
                        {"question": "often", "operator": "=", "answerCoding": CODING},
                        {"question": "score", "operator": ">=", "answerInteger": 7},
                    ],
                },
                {"linkId": "score", "type": "integer", "text": "Score"},
                {"linkId": "notes", "type": "string", "text": "Notes"},
            ],
        },
    ],
}


def form(**values: str | list[str]) -> MultiDict:
    pairs = []
    for key, value in values.items():
        for v in value if isinstance(value, list) else [value]:
            pairs.append((key, v))
    return MultiDict(pairs)


def answers_for(**values: str) -> dict[str, list[dict[str, Any]]]:
    return parse_answers(SYNTHETIC, submitted_values(form(**{f"a.{k}": v for k, v in values.items()}), SYNTHETIC))


def test_shipped_questionnaire_renders_every_item_and_asked_items_first() -> None:
    questionnaire = load_questionnaire()
    asked, rest = build_form(questionnaire, asked=["saddle-anaesthesia", "nsaid-response-within-48h", "nope"])
    assert [i.link_id for i in asked] == ["saddle-anaesthesia", "nsaid-response-within-48h"]
    rendered = {i.link_id for tree in rest for i in [tree, *tree.children]}
    answerable = {i["linkId"] for i in walk(questionnaire["item"]) if i["type"] != "group"}
    assert len(answerable) == 20
    assert rendered | {"saddle-anaesthesia", "nsaid-response-within-48h"} >= answerable
    assert "saddle-anaesthesia" not in rendered  # shown once, at the top
    assert canonical(questionnaire) == "http://example.org/fhir/lbp-cds/Questionnaire/back-pain-assessment|1.0.0"


def test_prefill_selects_the_value_and_submitted_values_win() -> None:
    prefill = {"pain": Prefill("true", "Condition: back pain")}
    _, rest = build_form(SYNTHETIC, prefill=prefill)
    pain = rest[1].children[0]
    assert pain.values == ["true"] and pain.prefill.source == "Condition: back pain"
    _, rest = build_form(SYNTHETIC, submitted={"pain": ["false"]}, prefill=prefill)
    assert rest[1].children[0].values == ["false"]


def test_enable_when_drops_disabled_items_from_the_response() -> None:
    answers = answers_for(pain="false", since="2026-01-02", score="3")
    assert not is_enabled(SYNTHETIC["item"][1]["item"][1], answers)  # since: pain = true fails
    response = build_response(SYNTHETIC, answers, "p1", NOW)
    linked = [i["linkId"] for g in response["item"] for i in g["item"]]
    assert linked == ["pain", "score"]


def test_enable_when_any_with_coding_and_integer_boundary() -> None:
    night = SYNTHETIC["item"][1]["item"][3]
    assert is_enabled(night, answers_for(pain="true", often="o1"))  # the coding matches
    assert not is_enabled(night, answers_for(pain="true", often="o0", score="6"))
    assert is_enabled(night, answers_for(pain="true", often="o0", score="7"))  # >= 7 at the boundary


def test_exists_condition() -> None:
    often = SYNTHETIC["item"][1]["item"][2]
    assert is_enabled(often, answers_for(pain="false"))
    assert not is_enabled(often, answers_for(score="1"))


def test_response_is_valid_fhir_with_version_subject_author_and_choice_coding() -> None:
    answers = answers_for(pain="true", since="2026-01-02", often="o1", notes="left side")
    response = build_response(SYNTHETIC, answers, "p1", NOW, "Practitioner/u1")
    QuestionnaireResponse.model_validate(response)
    assert response["questionnaire"] == "http://example.org/Questionnaire/synthetic|2.1"
    assert response["status"] == "completed" and response["subject"] == {"reference": "Patient/p1"}
    assert response["author"] == {"reference": "Practitioner/u1"} and response["authored"].startswith("2026-11-30T10")
    items = {i["linkId"]: i["answer"] for i in response["item"][0]["item"]}
    assert items == {
        "pain": [{"valueBoolean": True}],
        "since": [{"valueDate": "2026-01-02"}],
        "often": [{"valueCoding": CODING}],
        "notes": [{"valueString": "left side"}],
    }
    assert "author" not in build_response(SYNTHETIC, answers, "p1", NOW)


@pytest.mark.parametrize(
    ("link_id", "value", "words"),
    [
        ("pain", "maybe", "yes or no"),
        ("since", "02/01/2026", "YYYY-MM-DD"),
        ("since", "2026-02-30", "not a calendar date"),
        ("since", (date.today() + timedelta(days=2)).isoformat(), "future"),
        ("often", "o9", "choose one"),
        ("score", "7.5", "whole number"),
    ],
)
def test_bad_answers_name_the_question(link_id: str, value: str, words: str) -> None:
    with pytest.raises(FormError, match=words):
        answers_for(**{"pain": "true", link_id: value})


def test_today_is_not_in_the_future() -> None:
    assert answers_for(since=date.today().isoformat())["since"] == [{"valueDate": date.today().isoformat()}]


def test_unchanged_prefills_are_not_written_again() -> None:
    posted = form(**{"a.pain": "true", "p.pain": "true", "ps.pain": "old note", "a.score": "4", "p.score": "3"})
    values = submitted_values(posted, SYNTHETIC)
    fresh, prefills = new_information(posted, values)
    assert fresh == {"score": ["4"]}  # pain is what the record showed; the score was changed
    assert prefills["pain"].source == "old note"


def test_unsupported_item_type_is_refused(tmp_path: Any) -> None:
    broken = copy.deepcopy(SYNTHETIC)
    broken["item"].append({"linkId": "x", "type": "attachment"})
    path = tmp_path / "q.json"
    import json

    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="unsupported type"):
        load_questionnaire(path)


def test_sealed_cookie_is_encrypted_authenticated_and_expires() -> None:
    sealer = Sealer("s1")
    token = sealer.seal({"token": "secret-access-token"})
    assert "secret-access-token" not in token
    assert sealer.unseal(token, 60) == {"token": "secret-access-token"}
    assert sealer.unseal(token[:-2] + "AA", 60) is None
    assert Sealer("s2").unseal(token, 60) is None
    assert sealer.unseal(token, -1) is None  # older than max_age
    assert sealer.check_csrf("sid", sealer.csrf_token("sid")) and not sealer.check_csrf(
        "other", sealer.csrf_token("sid")
    )
