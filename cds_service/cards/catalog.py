"""The card catalog: every card file loaded once, and Decision + card file -> CDS Hooks card JSON."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    Undefined,
    make_logging_undefined,
)

from cds_service.clinical.model import Criterion, Decision, State, SuggestionSpec
from cds_service.smart.links import smart_link

from .files import (
    CardFileError,
    CardRenderError,
    CardTemplate,
    Labels,
    _compile,
    _make_env,
    _parse_card,
    _read_yaml,
    card_detail_setting,
    load_labels,
)
from .text import plain_text
from .vocabulary import CARD_DETAIL_MODES, PARTIALS_FILE, STATE_LABELS, SUMMARY_MAX, TOPIC_SYSTEM, TOPICS

log = logging.getLogger("cds_service.cards")

_LEAVES = frozenset({str, int, float, bool, type(None)})


def prune(value: Any) -> Any:
    """Drop None, "", [] and {} recursively: CDS Hooks forbids sending empty elements."""
    if type(value) in _LEAVES:  # fast path for the bulk of a card (same result as below)
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            v = prune(v)
            if v is not None and v != "" and v != [] and v != {}:
                out[k] = v
        return out
    if isinstance(value, list | tuple):
        out_list = []
        for v in value:
            v = prune(v)
            if v is not None and v != "" and v != [] and v != {}:
                out_list.append(v)
        return out_list
    return value




def _criterion_vars(criterion: Criterion, labels: Labels | None = None) -> dict[str, Any]:
    state = State(criterion.state)
    return {
        "id": criterion.id,
        "label": (labels or Labels()).criterion(criterion.id, criterion.label_params),
        "state": state.value,
        "state_label": STATE_LABELS[state],
        "met": state is State.MET,
        "not_met": state is State.NOT_MET,
        "not_documented": state is State.NOT_DOCUMENTED,
        "note": criterion.note,
        "evidence": [
            {"reference": e.reference, "text": e.text, "date": e.date, "value": e.value} for e in criterion.evidence
        ],
    }


def _context_missing(context: Any) -> list[str]:
    """Prefetch keys / data the record lacked, from a PatientRecord or a mapping."""
    if context is None:
        return []
    missing = getattr(context, "missing", None)
    if missing is None and isinstance(context, Mapping):
        missing = context.get("missing")
    return [str(m) for m in (missing or ())]


def _context_value(context: Any, key: str) -> Any:
    if isinstance(context, Mapping):
        return context.get(key)
    return getattr(context, key, None)


@dataclass
class CardCatalog:
    """All card files, validated and compiled. Load once; render many times (thread-safe)."""

    cards_dir: Path
    cards: Mapping[str, CardTemplate]
    strict: bool = False
    detail: str = "compact"  # site setting card_detail: compact | full (spec section 8)
    labels: Labels = field(default_factory=Labels)

    # ---- loading --------------------------------------------------------------------------

    @classmethod
    def load(
        cls, cards_dir: Path | str, *, strict: bool = False, detail: str | None = None, site_config: Path | None = None
    ) -> CardCatalog:
        """Load and validate every ``<topic>.yaml`` under *cards_dir*.

        *detail* (``compact`` | ``full``) chooses how much the card detail shows; when not given it
        is the site configuration's ``card_detail`` (compact without one).

        ``strict=True`` makes an undefined template variable an error (tests use it to prove the
        templates and the clinical Decision.params agree); production renders an undefined
        variable as empty text and logs it, so a wording gap never fails a clinician's request.
        """
        cards_dir = Path(cards_dir)
        if not cards_dir.is_dir():
            raise CardFileError(cards_dir, "(directory)", "card directory not found")
        partials: dict[str, str] = {}
        partials_path = cards_dir / PARTIALS_FILE
        if partials_path.exists():
            for name, text in _read_yaml(partials_path).items():
                if not isinstance(text, str) or not text.strip():
                    raise CardFileError(partials_path, str(name), "must be a non-empty template string")
                partials[str(name)] = text
        undefined: type[Undefined] = StrictUndefined if strict else make_logging_undefined(log, ChainableUndefined)
        md_env = _make_env(True, undefined, partials)
        plain_env = _make_env(False, undefined, partials)
        labels = load_labels(cards_dir)
        md_env.globals["labels"] = plain_env.globals["labels"] = labels
        for name, text in partials.items():
            _compile(md_env, text, partials_path, name)

        cards: dict[str, CardTemplate] = {}
        for path in sorted(cards_dir.glob("*.yaml")):
            if path.name.startswith("_"):
                continue
            card = _parse_card(path, _read_yaml(path), md_env, plain_env)
            cards[card.topic] = card
        missing = [t for t in TOPICS if t not in cards]
        if missing:
            raise CardFileError(cards_dir, "(topics)", f"no card file for topic(s): {', '.join(missing)}")
        if detail is None:
            detail = card_detail_setting(site_config)
        if detail not in CARD_DETAIL_MODES:
            raise CardFileError(cards_dir, "card_detail", f"must be one of {CARD_DETAIL_MODES}, got {detail!r}")
        catalog = cls(cards_dir=cards_dir, cards=cards, strict=strict, detail=detail, labels=labels)
        catalog._smoke_test()
        return catalog

    def _smoke_test(self) -> None:
        """Render each card once with its sampleParams (in both detail modes) so include/filter errors
        surface at start-up."""
        for card, detail in ((c, d) for c in self.cards.values() for d in CARD_DETAIL_MODES):
            decision = Decision(
                topic=card.topic,
                rule="catalog.smoke-test",
                citations=(),
                criteria=(),
                params=dict(card.sample_params),
            )
            try:
                self._render_text(card, decision, None, detail)
            except Exception as exc:  # noqa: BLE001 - re-raised with the file name
                raise CardFileError(card.path, "summary/detail", f"does not render with sampleParams: {exc}") from exc

    # ---- rendering ------------------------------------------------------------------------

    def _variables(self, card: CardTemplate, decision: Decision, context: Any, detail: str) -> dict[str, Any]:
        criteria = [_criterion_vars(c, self.labels) for c in decision.criteria]
        missing = _context_missing(context) or [str(m) for m in decision.params.get("missing", ()) or ()]
        variables: dict[str, Any] = dict(decision.params)
        variables.update(
            {
                "params": dict(decision.params),
                "topic": card.topic,
                "display": card.display,
                "indicator": card.indicator,
                "rule": decision.rule,
                "order_reference": decision.order_reference,
                "criteria": criteria,
                "met": [c for c in criteria if c["met"]],
                "not_met": [c for c in criteria if c["not_met"]],
                "not_documented": [c for c in criteria if c["not_documented"]],
                "citations": [
                    {"id": c.id, "title": c.title, "version": c.version, "url": c.url} for c in decision.citations
                ],
                "missing": missing,
                "data_incomplete": bool(missing) or bool(decision.params.get("partial")),
                "hook": _context_value(context, "hook"),
                "card_detail": detail,
                "full_detail": detail == "full",
            }
        )
        return variables

    def _render_text(
        self, card: CardTemplate, decision: Decision, context: Any, detail: str | None = None
    ) -> tuple[str, str]:
        variables = self._variables(card, decision, context, detail or self.detail)
        summary = plain_text(card.summary.render(variables))
        if len(summary) > SUMMARY_MAX:
            log.warning("card %s: summary is %d characters; truncated", card.topic, len(summary))
            summary = summary[: SUMMARY_MAX - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
        detail = _tidy_markdown(card.detail.render(variables))
        return summary, detail

    def render(self, decision: Decision, context: Any = None, *, detail: str | None = None) -> dict[str, Any]:
        """Turn one Decision into a CDS Hooks 2.0 card.

        *context* is the hook context (a mapping) or the PatientRecord; it supplies ``missing``
        (data the service could not obtain → the "data incomplete" notice) and ``hook``.
        *detail* overrides the catalog's detail mode (``compact`` | ``full``) for this card.
        """
        card = self.cards.get(decision.topic)
        if card is None:
            raise CardRenderError(f"no card file for topic {decision.topic!r}")
        if detail is not None and detail not in CARD_DETAIL_MODES:
            raise CardRenderError(f"detail must be one of {CARD_DETAIL_MODES}, got {detail!r}")
        summary, detail = self._render_text(card, decision, context, detail)
        suggestions = self._suggestions(card, decision.suggestions)
        result: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "summary": summary,
            "detail": detail,
            "indicator": card.indicator,
            "source": {
                "label": card.source_label,
                "url": card.source_url,
                "icon": card.source_icon,
                "topic": {"system": TOPIC_SYSTEM, "code": card.topic, "display": card.display},
            },
            "suggestions": suggestions,
            "selectionBehavior": card.selection_behavior if suggestions else None,
            "overrideReasons": [dict(r) for r in card.override_reasons],
            "links": [dict(link) for link in card.links],
        }
        if (smart := smart_link(decision)) is not None:  # the assessment app asks what is not documented
            result["links"] = [*result["links"], smart]
        return prune(result)

    def _suggestions(self, card: CardTemplate, specs: Sequence[SuggestionSpec]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        recommended_seen = False
        for spec in specs:
            template = card.suggestion_labels.get(spec.kind)
            if template is None:
                raise CardRenderError(
                    f"{card.path.name}: no suggestions.{spec.kind}.label for suggestion kind {spec.kind!r}"
                )
            if not spec.actions:
                raise CardRenderError(f"{card.topic}: suggestion {spec.kind!r} has no actions")
            recommended = bool(spec.recommended)
            if recommended and recommended_seen and card.selection_behavior == "at-most-one":
                log.warning("card %s: more than one recommended suggestion with at-most-one", card.topic)
                recommended = False
            recommended_seen = recommended_seen or recommended
            out.append(
                {
                    "uuid": str(uuid.uuid4()),
                    "label": plain_text(template.render(dict(spec.params))),
                    "isRecommended": recommended,
                    "actions": [dict(a) for a in spec.actions],
                }
            )
        return out


_BLANK_RUNS = re.compile(r"\n{3,}")


def _tidy_markdown(text: str) -> str:
    """Trim trailing spaces and collapse runs of blank lines left by template conditionals."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines))


# --------------------------------------------------------------------------------------------
# Module-level convenience (architecture contract: cards.render(decision, context))
# --------------------------------------------------------------------------------------------

_default_catalog: CardCatalog | None = None


def default_cards_dir() -> Path:
    """The same default as the service's settings: cds_service/data/cards (-> the repo's cards/)."""
    from cds_service.settings import Settings

    return Settings.__dataclass_fields__["cards_dir"].default


def set_default_catalog(catalog: CardCatalog) -> None:
    """Install the catalog the app loaded at start-up as the one `render` uses."""
    global _default_catalog
    _default_catalog = catalog


def get_default_catalog() -> CardCatalog:
    global _default_catalog
    if _default_catalog is None:
        _default_catalog = CardCatalog.load(default_cards_dir())
    return _default_catalog


def render(decision: Decision, context: Any = None) -> dict[str, Any]:
    """Render with the start-up catalog (loads cards/ on first use if the app did not)."""
    return get_default_catalog().render(decision, context)
