"""The Questionnaire as a form, and the form's answers as a QuestionnaireResponse.

Generic over the item types the product's Questionnaire may use (group, display, boolean, date,
choice, string, text, integer, decimal) and over enableWhen, so a new version of the Questionnaire
needs no code change. Form fields are named ``a.<linkId>``; a choice's value is ``o<index>`` of its
answerOption. Disabled items (enableWhen false) are never written to the response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

QUESTIONNAIRE_FILE = (
    Path(__file__).resolve().parent.parent / "data" / "fhir" / "Questionnaire-back-pain-assessment.json"
)
ANSWER_TYPES = {"boolean", "date", "choice", "string", "text", "integer", "decimal"}
SUPPORTED_TYPES = ANSWER_TYPES | {"group", "display"}
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


class FormError(ValueError):
    """An answer the form cannot turn into FHIR (named by its item's text)."""


def load_questionnaire(path: Path = QUESTIONNAIRE_FILE) -> dict[str, Any]:
    questionnaire = json.loads(path.read_text("utf-8"))
    for item in walk(questionnaire.get("item")):
        if item.get("type") not in SUPPORTED_TYPES:
            raise ValueError(f"{path.name}: item {item.get('linkId')!r} has unsupported type {item.get('type')!r}")
    return questionnaire


def canonical(questionnaire: Mapping[str, Any]) -> str:
    """`url|version`, as the QuestionnaireResponse must name it."""
    version = questionnaire.get("version")
    return f"{questionnaire['url']}|{version}" if version else str(questionnaire["url"])


def walk(items: Any) -> Iterator[dict[str, Any]]:
    for item in items or []:
        yield item
        yield from walk(item.get("item"))


@dataclass
class Prefill:
    """A value the record already shows for an item (rendered selected and marked "from the record")."""

    value: str  # the form value: "true"/"false", "YYYY-MM-DD", "o2", text
    source: str  # what in the record says so, in words (no identifiers)


@dataclass
class FormItem:
    """One Questionnaire item ready for the template."""

    link_id: str
    text: str
    type: str
    options: list[tuple[str, str]] = field(default_factory=list)  # (form value, label)
    repeats: bool = False
    required: bool = False
    enable_when: str | None = None  # JSON for the page script: {behavior, conditions}
    children: list[FormItem] = field(default_factory=list)
    values: list[str] = field(default_factory=list)  # current form values (submitted, else prefill)
    prefill: Prefill | None = None
    asked: bool = False  # named in the launch's appContext: shown first


def _option_label(option: Mapping[str, Any]) -> str:
    for key, value in option.items():
        if key == "valueCoding":
            return str(value.get("display") or value.get("code"))
        if key.startswith("value"):
            return str(value)
    return "?"


def _option_value(option: Mapping[str, Any]) -> tuple[str, Any]:
    key = next(k for k in option if k.startswith("value"))
    return key, option[key]


def _enable_when_json(item: Mapping[str, Any], options_of: Mapping[str, list[dict[str, Any]]]) -> str | None:
    conditions = item.get("enableWhen")
    if not conditions:
        return None
    out = []
    for cond in conditions:
        key = next((k for k in cond if k.startswith("answer")), None)
        expected: Any = cond.get(key) if key else None
        if key == "answerCoding":  # the page compares form values: turn the coding into the option's o<index>
            expected = next(
                (
                    f"o{i}"
                    for i, o in enumerate(options_of.get(cond["question"], []))
                    if _same_coding(o.get("valueCoding"), cond[key])
                ),
                None,
            )
        elif isinstance(expected, bool):
            expected = "true" if expected else "false"
        out.append({"question": cond["question"], "operator": cond["operator"], "answer": expected})
    return json.dumps({"behavior": item.get("enableBehavior", "all"), "conditions": out})


def _same_coding(a: Any, b: Any) -> bool:
    return (
        isinstance(a, dict)
        and isinstance(b, dict)
        and a.get("code") == b.get("code")
        and (a.get("system") == b.get("system") or not b.get("system"))
    )


def build_form(
    questionnaire: Mapping[str, Any],
    submitted: Mapping[str, list[str]] | None = None,
    prefill: Mapping[str, Prefill] | None = None,
    asked: Iterable[str] = (),
) -> tuple[list[FormItem], list[FormItem]]:
    """(items asked for by the card, the rest of the Questionnaire without them), both as trees."""
    submitted = submitted or {}
    prefill = prefill or {}
    asked = [a for a in asked if isinstance(a, str)]
    options_of = {i["linkId"]: i.get("answerOption") or [] for i in walk(questionnaire.get("item"))}
    first: dict[str, FormItem] = {}

    def convert(item: Mapping[str, Any]) -> FormItem | None:
        link_id = item["linkId"]
        form_item = FormItem(
            link_id=link_id,
            text=item.get("text") or link_id,
            type=item["type"],
            options=[(f"o{i}", _option_label(o)) for i, o in enumerate(item.get("answerOption") or [])],
            repeats=bool(item.get("repeats")),
            required=bool(item.get("required")),
            enable_when=_enable_when_json(item, options_of),
            prefill=prefill.get(link_id),
        )
        if link_id in submitted:
            form_item.values = list(submitted[link_id])
        elif form_item.prefill is not None:
            form_item.values = [form_item.prefill.value]
        children = [c for c in (convert(child) for child in item.get("item") or []) if c is not None]
        form_item.children = children
        if link_id in asked and item["type"] in ANSWER_TYPES:
            form_item.asked = True
            first[link_id] = form_item
            return None
        if item["type"] == "group" and not children:
            return None
        return form_item

    rest = [c for c in (convert(item) for item in questionnaire.get("item") or []) if c is not None]
    return [first[a] for a in asked if a in first], rest


# ---------------------------------------------------------------------------------------------- answers


def submitted_values(form: Mapping[str, Any], questionnaire: Mapping[str, Any]) -> dict[str, list[str]]:
    """The raw form values per linkId (empty strings dropped), for re-rendering and for parsing."""
    values: dict[str, list[str]] = {}
    for item in walk(questionnaire.get("item")):
        if item["type"] in ANSWER_TYPES:
            got = [v.strip() for v in form.getlist(f"a.{item['linkId']}") if v.strip()]  # type: ignore[attr-defined]
            if got:
                values[item["linkId"]] = got
    return values


def new_information(
    form: Mapping[str, Any], values: Mapping[str, list[str]]
) -> tuple[dict[str, list[str]], dict[str, Prefill]]:
    """(the values to write, the prefills to show again): an answer still equal to what the record
    showed is not written again, so a new response never re-dates old data (a fever from an old
    observation must not become today's answer)."""
    prefills = {
        key[2:]: Prefill(str(value), str(form.get(f"ps.{key[2:]}") or "")[:300])
        for key, value in form.items()
        if key.startswith("p.") and isinstance(value, str)
    }
    fresh = {k: v for k, v in values.items() if not (k in prefills and v == [prefills[k].value])}
    return fresh, prefills


def _answer(item: Mapping[str, Any], raw: str) -> dict[str, Any]:
    kind, text = item["type"], item.get("text") or item["linkId"]
    if kind == "boolean":
        if raw not in {"true", "false"}:
            raise FormError(f"'{text}': answer yes or no")
        return {"valueBoolean": raw == "true"}
    if kind == "date":
        if not _DATE.match(raw):
            raise FormError(f"'{text}': enter a date as YYYY-MM-DD")
        if len(raw) == 10:
            try:
                day = date.fromisoformat(raw)
            except ValueError as exc:
                raise FormError(f"'{text}': {raw} is not a calendar date") from exc
            if day > date.today():
                raise FormError(f"'{text}': the date is in the future")
        return {"valueDate": raw}
    if kind == "choice":
        options = item.get("answerOption") or []
        index = int(raw[1:]) if re.fullmatch(r"o\d+", raw) else -1
        if not 0 <= index < len(options):
            raise FormError(f"'{text}': choose one of the options")
        key, value = _option_value(options[index])
        return {key: value}
    if kind == "integer":
        try:
            return {"valueInteger": int(raw)}
        except ValueError as exc:
            raise FormError(f"'{text}': enter a whole number") from exc
    if kind == "decimal":
        try:
            return {"valueDecimal": float(raw)}
        except ValueError as exc:
            raise FormError(f"'{text}': enter a number") from exc
    return {"valueString": raw}


def parse_answers(questionnaire: Mapping[str, Any], values: Mapping[str, list[str]]) -> dict[str, list[dict]]:
    """linkId -> FHIR answers; raises FormError naming the first bad item."""
    answers: dict[str, list[dict[str, Any]]] = {}
    for item in walk(questionnaire.get("item")):
        raw = values.get(item["linkId"])
        if item["type"] in ANSWER_TYPES and raw:
            answers[item["linkId"]] = [_answer(item, r) for r in (raw if item.get("repeats") else raw[:1])]
    return answers


def _compare(actual: Any, operator: str, expected: Any) -> bool:
    if isinstance(expected, dict) or isinstance(actual, dict):
        same = isinstance(actual, dict) and _same_coding(actual, expected)
        return same if operator == "=" else not same if operator == "!=" else False
    try:
        if operator == "=":
            return actual == expected
        if operator == "!=":
            return actual != expected
        if operator == ">":
            return actual > expected
        if operator == "<":
            return actual < expected
        if operator == ">=":
            return actual >= expected
        if operator == "<=":
            return actual <= expected
    except TypeError:
        return False
    return False


def is_enabled(item: Mapping[str, Any], answers: Mapping[str, list[dict[str, Any]]]) -> bool:
    """FHIR R4 enableWhen over the answers given (enableBehavior all/any)."""
    conditions = item.get("enableWhen") or []
    if not conditions:
        return True
    results = []
    for cond in conditions:
        given = [next(iter(a.values())) for a in answers.get(cond["question"], [])]
        key = next((k for k in cond if k.startswith("answer")), None)
        expected = cond.get(key) if key else None
        if cond["operator"] == "exists":
            results.append(bool(given) == bool(expected))
        else:
            results.append(any(_compare(g, cond["operator"], expected) for g in given))
    return any(results) if item.get("enableBehavior") == "any" else all(results)


def _response_items(items: Any, answers: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for item in items or []:
        if not is_enabled(item, answers):
            continue
        if item["type"] == "group":
            children = _response_items(item.get("item"), answers)
            if children:
                group = {"linkId": item["linkId"], "text": item.get("text"), "item": children}
                out.append({k: v for k, v in group.items() if v is not None})
        elif item["type"] in ANSWER_TYPES and item["linkId"] in answers:
            entry: dict[str, Any] = {
                "linkId": item["linkId"],
                "text": item.get("text"),
                "answer": answers[item["linkId"]],
            }
            out.append({k: v for k, v in entry.items() if v is not None})
    return out


def build_response(
    questionnaire: Mapping[str, Any],
    answers: Mapping[str, list[dict[str, Any]]],
    patient_id: str,
    authored: datetime,
    author: str | None = None,
) -> dict[str, Any]:
    """A completed QuestionnaireResponse naming the Questionnaire with its version."""
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": canonical(questionnaire),
        "status": "completed",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authored": authored.isoformat(timespec="seconds"),
    }
    if author:
        response["author"] = {"reference": author}
    response["item"] = _response_items(questionnaire.get("item"), answers)
    return response
