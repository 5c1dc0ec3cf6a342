"""Answers from the product's own back pain assessment Questionnaire (spec section 5).

Only QuestionnaireResponses to our canonical (optionally with |version) in status completed/amended are
read. Per linkId the most recent answer wins (by authored; undated responses count as oldest). An answer
of the wrong type is kept as "wrong type" so the criterion shows as not documented, never as "no".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.clinical.dates import DateSpan, parse_fhir_date
from cds_service.clinical.fhir_read import reference_of
from cds_service.clinical.knowledge import QUESTIONNAIRE_URL
from cds_service.clinical.model import Evidence, State

READ_STATUSES = frozenset({"completed", "amended"})

#: The symptom section (inflammatory back pain features, leg pain).
SYMPTOM_ITEMS = (
    "insidious-onset",
    "morning-stiffness-over-30-min",
    "improves-with-movement",
    "no-improvement-with-rest",
    "night-waking-second-half",
    "buttock-pain",
    "alternating-buttock-pain",
    "nsaid-response-within-48h",
    "leg-pain-below-knee",
)
#: The red-flag section (spec section 5): fixtures and tests answer it as a whole.
RED_FLAG_ITEMS = (
    "saddle-anaesthesia",
    "bladder-or-bowel-dysfunction",
    "progressive-leg-weakness",
    "fever",
    "unexplained-weight-loss",
    "history-of-cancer",
    "iv-drug-use",
    "immunosuppression",
    "significant-trauma",
    "long-term-steroids",
)
BOOLEAN_ITEMS = (*SYMPTOM_ITEMS, *RED_FLAG_ITEMS)
DATE_ITEMS = ("pain-onset-date",)


def is_our_questionnaire(value: Any) -> bool:
    return isinstance(value, str) and value.split("|", 1)[0] == QUESTIONNAIRE_URL


def is_readable_response(resource: dict[str, Any]) -> bool:
    return is_our_questionnaire(resource.get("questionnaire")) and resource.get("status") in READ_STATUSES


@dataclass(frozen=True)
class Answer:
    link_id: str
    reference: str  # "QuestionnaireResponse/9#fever"
    authored: DateSpan | None
    value_type: str | None  # "valueBoolean", "valueDate", ... (None = item without answer)
    value: Any

    def evidence(self, text: str) -> Evidence:
        return Evidence(
            reference=self.reference,
            text=text,
            date=self.authored.text if self.authored else None,
            value=_value_text(self.value),
        )


def _value_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return None if value is None else str(value)


def _walk(items: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(items, list):
        return
    for item in items:
        if isinstance(item, dict):
            yield item
            yield from _walk(item.get("item"))
            for answer in item.get("answer") or []:
                if isinstance(answer, dict):
                    yield from _walk(answer.get("item"))


class QuestionnaireAnswers:
    """Latest answer per linkId across all readable responses."""

    def __init__(self, responses: Iterable[dict[str, Any]]) -> None:
        self._answers: dict[str, Answer] = {}
        dated = [(parse_fhir_date(r.get("authored")), r) for r in responses if is_readable_response(r)]
        dated.sort(key=lambda pair: pair[0].latest if pair[0] else date.min)
        for authored, response in dated:
            for item in _walk(response.get("item")):
                link_id = item.get("linkId")
                answers = item.get("answer")
                if not isinstance(link_id, str) or not isinstance(answers, list) or not answers:
                    continue
                first = answers[0] if isinstance(answers[0], dict) else {}
                value_keys = [k for k in first if k.startswith("value")]
                value_type = value_keys[0] if value_keys else None
                self._answers[link_id] = Answer(
                    link_id=link_id,
                    reference=f"{reference_of(response)}#{link_id}",
                    authored=authored,
                    value_type=value_type,
                    value=first.get(value_type) if value_type else None,
                )

    def get(self, link_id: str) -> Answer | None:
        return self._answers.get(link_id)

    def boolean(self, link_id: str, text: str) -> tuple[State, Evidence | None, str | None]:
        """(state, evidence, note) for a boolean item; wrong answer types are not documented."""
        answer = self._answers.get(link_id)
        if answer is None:
            return State.NOT_DOCUMENTED, None, None
        if answer.value_type != "valueBoolean" or not isinstance(answer.value, bool):
            note = f"questionnaire item '{link_id}' has an answer of type {answer.value_type}, not valueBoolean"
            return State.NOT_DOCUMENTED, None, note
        state = State.MET if answer.value else State.NOT_MET
        return state, answer.evidence(f"Questionnaire: {text}"), None

    def date_value(self, link_id: str) -> tuple[DateSpan | None, Answer | None, str | None]:
        """A date item (valueDate, or valueDateTime tolerated); wrong types give a note."""
        answer = self._answers.get(link_id)
        if answer is None:
            return None, None, None
        if answer.value_type not in ("valueDate", "valueDateTime"):
            return (
                None,
                answer,
                f"questionnaire item '{link_id}' has an answer of type {answer.value_type}, not valueDate",
            )
        span = parse_fhir_date(answer.value)
        if span is None:
            return None, answer, f"questionnaire item '{link_id}' has an unreadable date {answer.value!r}"
        return span, answer, None
