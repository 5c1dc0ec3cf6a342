"""Decision + cards/<topic>.yaml → CDS Hooks 2.0 card JSON.

Card wording lives in YAML files a clinician can review (see cards/README.md); this module
only loads, validates and renders them. Why it is built this way:

* The card files are loaded and validated ONCE at start-up (`CardCatalog.load`). A broken
  card file must stop the service from starting with an error naming the file and the field,
  never fail a clinician's request later.
* Templates run in a Jinja2 *sandboxed* environment with HTML autoescape OFF (the detail is
  Markdown, not HTML). Every value a template prints with ``{{ ... }}`` is escaped
  automatically (Jinja ``finalize``) because values come from patient records: a condition
  display such as ``*urgent* <img src=x>`` must show as text, not become Markdown or HTML.
  Summaries and suggestion labels are plain text, so they are only whitespace-normalised.
* The renderer never emits ``null``, ``""``, ``[]`` or ``{}`` (CDS Hooks 2.0 JSON rules).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml
from jinja2 import (
    ChainableUndefined,
    DictLoader,
    StrictUndefined,
    Template,
    TemplateError,
    Undefined,
    make_logging_undefined,
)
from jinja2.sandbox import SandboxedEnvironment

from cds_service.clinical.knowledge import CARD_TOPIC_SYSTEM, FHIR_DIR, OVERRIDE_REASON_SYSTEM
from cds_service.clinical.model import Criterion, Decision, State, SuggestionSpec
from cds_service.smart.links import smart_link

log = logging.getLogger(__name__)

TOPIC_SYSTEM = CARD_TOPIC_SYSTEM
TOPIC_CODESYSTEM_FILE = FHIR_DIR / "CodeSystem-card-topic.json"
OVERRIDE_REASON_FILE = FHIR_DIR / "CodeSystem-override-reason.json"


def _codesystem_concepts(path: Path) -> dict[str, str]:
    """code -> display of a shipped FHIR CodeSystem (the one owner of that vocabulary)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {c["code"]: c["display"] for c in raw["concept"]}


#: Every card topic of the clinical specification (section 6), read from the shipped card-topic
#: CodeSystem. The catalog refuses to start without a card file for each of them.
TOPICS: tuple[str, ...] = tuple(_codesystem_concepts(TOPIC_CODESYSTEM_FILE))
#: The shipped override reasons (code -> display): every card's overrideReasons come from here.
OVERRIDE_REASONS: Mapping[str, str] = _codesystem_concepts(OVERRIDE_REASON_FILE)

#: Site setting `card_detail` (spec section 8): compact detail by default, the full criteria tables
#: only when the site configuration says `card_detail: full`.
CARD_DETAIL_MODES = ("compact", "full")
INDICATORS = ("info", "warning", "critical")
SELECTION_BEHAVIORS = ("at-most-one", "any")
LINK_TYPES = ("absolute", "smart")
SUMMARY_MAX = 139  # CDS Hooks: "<140 characters"
PARTIALS_FILE = "_partials.yaml"
LABELS_DIR = "labels"

STATE_LABELS = {
    State.MET: "Met",
    State.NOT_MET: "Not met",
    State.NOT_DOCUMENTED: "Not documented",
}
# Identifiers of coding systems as written in evidence text ("Psoriasis (SNOMED 9014002)").
_CODE_SUFFIX = re.compile(r"\s*\((?:SNOMED|ICD-10-CM|ICD-10|LOINC|CPT|RxNorm|ATC|code|http\S*)\s[^()]*\)")


class CardFileError(ValueError):
    """A card file is invalid. The message names the file and the field."""

    def __init__(self, path: Path | str, field_name: str, problem: str) -> None:
        self.path = str(path)
        self.field = field_name
        super().__init__(f"{path}: {field_name}: {problem}")


class CardRenderError(RuntimeError):
    """A Decision cannot be rendered with the loaded card files (a contract bug, not bad data)."""


# --------------------------------------------------------------------------------------------
# Escaping
# --------------------------------------------------------------------------------------------


class SafeMarkdown(str):
    """Text already escaped (or produced by a trusted filter); ``finalize`` leaves it alone."""


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s+")
# Always significant inline in GitHub-flavoured Markdown: escapes, code spans, emphasis,
# link brackets, table pipes, strikethrough, and "!" (image) / "@" (email autolinks).
_INLINE_SPECIALS = re.compile(r"([\\`*_\[\]|~!@{}])")
# Only significant at the start of a line: headings, lists, block quotes, setext underlines.
_LINE_START = re.compile(r"^([#+\-=])")
_ORDERED_LIST = re.compile(r"^(\d{1,9})([.)])(?=\s|$)")
# GFM extended autolinks ("http://x", "www.x") would turn patient text into live links.
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto)(:)|\b(www)(\.)")
# Anything any of the substitutions of escape_markdown would act on (the union of their patterns).
_NEEDS_ESCAPE = re.compile(r"[&<>\\`*_\[\]|~!@{}]|(?i:https?|ftp|mailto):|(?i:\bwww\.)|^[#+\-=]|^\d{1,9}[.)](?=\s|$)")


def plain_text(value: Any) -> str:
    """Collapse a value to one line of plain text (summaries, labels, and before escaping).

    Newlines are removed so that data can never start a new Markdown block.
    """
    if value is None or isinstance(value, Undefined):
        return ""
    text = _CONTROL.sub(" ", str(value))
    return _WHITESPACE.sub(" ", text).strip()


def escape_markdown(value: Any) -> SafeMarkdown:
    """Escape a data value for inclusion in GitHub-flavoured Markdown.

    HTML metacharacters become entities (no raw HTML can be injected); Markdown punctuation
    that could start emphasis, links, images, code, tables or blocks gets a backslash; URLs
    are broken so the renderer does not autolink them. The result reads naturally once
    rendered, and the raw text stays legible.
    """
    if isinstance(value, SafeMarkdown):
        return value
    text = plain_text(value)
    if _NEEDS_ESCAPE.search(text) is None:  # nothing below would change it (most dates, codes, labels)
        return SafeMarkdown(text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _INLINE_SPECIALS.sub(r"\\\1", text)
    text = _AUTOLINK.sub(lambda m: f"{m.group(1)}\\{m.group(2)}" if m.group(1) else f"{m.group(3)}\\.", text)
    text = _LINE_START.sub(r"\\\1", text)
    text = _ORDERED_LIST.sub(r"\1\\\2", text)
    return SafeMarkdown(text)


def safe_url(value: Any) -> SafeMarkdown:
    """A link destination for ``[label](url)``: http(s) only, with the breaking characters encoded.

    Anything else (``javascript:``, relative paths) becomes ``#`` so a bad value cannot
    produce an active link.
    """
    text = plain_text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return SafeMarkdown("#")
    return SafeMarkdown(quote(text, safe=":/?#@!$&'*+,;=%-._~[]"))


def _finalize_markdown(value: Any) -> Any:
    """Jinja ``finalize`` for Markdown templates: every printed value is escaped."""
    if isinstance(value, SafeMarkdown):
        return value
    if value is None or isinstance(value, Undefined):
        return ""
    return escape_markdown(value)


def _finalize_plain(value: Any) -> Any:
    """Jinja ``finalize`` for plain-text templates (summary, suggestion labels)."""
    if value is None or isinstance(value, Undefined):
        return ""
    return plain_text(value)


def _day(value: Any) -> str:
    """ISO date or dateTime → YYYY-MM-DD (the card shows dates, not times)."""
    text = plain_text(value)
    return text[:10] if re.match(r"^\d{4}-\d{2}-\d{2}", text) else text


def _human_list(values: Any, conjunction: str = "and") -> str:
    """['a', 'b', 'c'] → 'a, b and c'."""
    items = [plain_text(v) for v in (values or []) if plain_text(v)]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _lower_first(value: Any) -> str:
    """'Foot drop' → 'foot drop' (for labels used mid-sentence)."""
    text = plain_text(value)
    if len(text) > 1 and text[1].isupper():  # keep acronyms such as "HLA-B27", "CRP"
        return text
    return text[:1].lower() + text[1:]


def _prefixed(items: Any, prefix: str) -> list[Any]:
    """Criteria whose id starts with *prefix* (e.g. the "nice-" criteria of the axSpA checklist)."""
    return [item for item in (items or []) if str(item.get("id", "")).startswith(prefix)]


def _without_code(value: Any) -> str:
    """'Psoriatic arthritis (SNOMED 33339001)' -> 'Psoriatic arthritis' (compact detail shows words)."""
    return _CODE_SUFFIX.sub("", plain_text(value)).strip()


_RELATIONSHIP_VALUE = re.compile(r"^relationship (\S+)$")


def _evidence_brief(evidence: Any, relatives: Mapping[str, str] | None = None, limit: int = 2) -> SafeMarkdown:
    """A criterion's data in a few words for the compact detail, escaped for Markdown.

    'Psoriatic arthritis (SNOMED 33339001)' + value 'relationship MTH' -> 'mother: psoriatic arthritis'
    (*relatives*: the card file's words for HL7 v3 RoleCode family members); otherwise 'what: value, date'
    without code-system suffixes. At most *limit* items, then '+N more'.
    """
    items = [e for e in (evidence or []) if isinstance(e, Mapping)]
    parts: list[str] = []
    for e in items[:limit]:
        text = _without_code(e.get("text"))
        value = plain_text(e.get("value"))
        relation = _RELATIONSHIP_VALUE.match(value)
        if relation and relatives is not None:
            who = relatives.get(relation.group(1).upper()) or relatives.get("*") or relation.group(1)
            part = f"{who}: {_lower_first(text)}"
        else:
            part = f"{text}: {value}" if value else text
        if e.get("date"):
            part += f", {_day(e.get('date'))}"
        parts.append(part)
    if len(items) > limit:
        parts.append(f"+{len(items) - limit} more")
    return SafeMarkdown("; ".join(escape_markdown(p) for p in parts if p))


def card_detail_setting(site_config: Path | str | None) -> str:
    """The site's `card_detail` (compact | full) from its site configuration YAML; compact without one.

    The same file also holds the site's value sets and thresholds (read by clinical.knowledge); only
    this key is read here. A wrong value stops the start-up, like any other invalid site setting.
    """
    if site_config is None:
        return "compact"
    path = Path(site_config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CardFileError(path, "card_detail", f"cannot read the site configuration: {exc}") from exc
    value = data.get("card_detail", "compact") if isinstance(data, dict) else "compact"
    if value not in CARD_DETAIL_MODES:
        raise CardFileError(path, "card_detail", f"must be one of {CARD_DETAIL_MODES}, got {value!r}")
    return str(value)


def _make_env(markdown: bool, undefined: type[Undefined], partials: Mapping[str, str]) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        autoescape=False,
        undefined=undefined,
        finalize=_finalize_markdown if markdown else _finalize_plain,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        loader=DictLoader(dict(partials)),
    )
    env.filters["md"] = escape_markdown
    env.filters["url"] = safe_url
    env.filters["plain"] = plain_text
    env.filters["day"] = _day
    env.filters["human_list"] = _human_list
    env.filters["lower_first"] = _lower_first
    env.filters["prefixed"] = _prefixed
    env.filters["without_code"] = _without_code
    env.filters["brief"] = _evidence_brief
    return env


# --------------------------------------------------------------------------------------------
# Card files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardTemplate:
    """One validated card file."""

    path: Path
    topic: str
    display: str
    indicator: str
    source_label: str
    source_url: str | None
    source_icon: str | None
    summary: Template
    detail: Template
    suggestion_labels: Mapping[str, Template]
    selection_behavior: str | None
    override_reasons: tuple[dict[str, str], ...]
    links: tuple[dict[str, Any], ...]
    sample_params: Mapping[str, Any] = field(default_factory=dict)


def _require(data: Mapping[str, Any], key: str, path: Path, kind: type = str, where: str = "") -> Any:
    name = f"{where}{key}"
    if key not in data or data[key] is None:
        raise CardFileError(path, name, "is required")
    value = data[key]
    if not isinstance(value, kind):
        raise CardFileError(path, name, f"must be a {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, str | list | dict) and not value:
        raise CardFileError(path, name, "must not be empty")
    return value


def _optional(data: Mapping[str, Any], key: str, path: Path, kind: type = str, where: str = "") -> Any:
    if data.get(key) is None:
        return None
    return _require(data, key, path, kind, where)


def _check_url(url: str, path: Path, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CardFileError(path, name, f"must be an absolute http(s) URL, got {url!r}")
    return url


def _compile(env: SandboxedEnvironment, source: str, path: Path, name: str) -> Template:
    try:
        return env.from_string(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        at = f" (template line {line})" if line else ""
        raise CardFileError(path, name, f"template does not compile{at}: {exc}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CardFileError(path, "(file)", f"is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CardFileError(path, "(file)", "must be a YAML mapping")
    return data


def _parse_override_reasons(raw: Any, path: Path) -> tuple[dict[str, str], ...]:
    """Codes of the shipped override-reason CodeSystem (display taken from it, never restated).

    A site may add its own reason as ``{system, code, display}`` with a system other than the
    shipped one; a shipped code the CodeSystem lacks is an error, so analytics can group by code.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise CardFileError(path, "overrideReasons", "must be a non-empty list (or be left out)")
    reasons: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        where = f"overrideReasons[{i}]"
        if isinstance(item, str):
            item = {"code": item}
        if not isinstance(item, dict):
            raise CardFileError(path, where, "must be a code of the override-reason CodeSystem")
        code = _require(item, "code", path, str, f"{where}.")
        system = _optional(item, "system", path, str, f"{where}.") or OVERRIDE_REASON_SYSTEM
        if system == OVERRIDE_REASON_SYSTEM:
            if code not in OVERRIDE_REASONS:
                problem = f"code {code!r} is not in the override-reason CodeSystem ({OVERRIDE_REASON_FILE.name})"
                raise CardFileError(path, where, problem)
            if item.get("display") is not None:
                raise CardFileError(path, f"{where}.display", "comes from the CodeSystem; give only the code")
            display = OVERRIDE_REASONS[code]
        else:
            display = _require(item, "display", path, str, f"{where}.")
        if (system, code) in seen:
            raise CardFileError(path, f"{where}.code", f"duplicate code {code!r}")
        seen.add((system, code))
        reasons.append({"system": system, "code": code, "display": display})
    return tuple(reasons)


def _parse_links(raw: Any, path: Path) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise CardFileError(path, "links", "must be a non-empty list (or be left out)")
    links: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        where = f"links[{i}]."
        if not isinstance(item, dict):
            raise CardFileError(path, f"links[{i}]", "must be a mapping with label and url")
        link_type = _optional(item, "type", path, str, where) or "absolute"
        if link_type not in LINK_TYPES:
            raise CardFileError(path, f"{where}type", f"must be one of {LINK_TYPES}, got {link_type!r}")
        link: dict[str, Any] = {
            "label": _require(item, "label", path, str, where),
            "url": _check_url(_require(item, "url", path, str, where), path, f"{where}url"),
            "type": link_type,
        }
        if link_type == "smart" and item.get("appContext"):
            link["appContext"] = str(item["appContext"])
        links.append(link)
    return tuple(links)


def _parse_card(
    path: Path, data: Mapping[str, Any], md_env: SandboxedEnvironment, plain_env: SandboxedEnvironment
) -> CardTemplate:
    topic = _require(data, "topic", path)
    if topic not in TOPICS:
        raise CardFileError(path, "topic", f"unknown topic {topic!r}; expected one of {', '.join(TOPICS)}")
    if path.stem != topic:
        raise CardFileError(path, "topic", f"{topic!r} does not match the file name (expected {topic}.yaml)")
    indicator = _require(data, "indicator", path)
    if indicator not in INDICATORS:
        raise CardFileError(path, "indicator", f"must be one of {INDICATORS}, got {indicator!r}")
    source = _require(data, "source", path, dict)
    source_url = _optional(source, "url", path, str, "source.")
    if source_url:
        _check_url(source_url, path, "source.url")
    source_icon = _optional(source, "icon", path, str, "source.")
    if source_icon:
        _check_url(source_icon, path, "source.icon")

    labels: dict[str, Template] = {}
    raw_suggestions = data.get("suggestions")
    if raw_suggestions is not None:
        if not isinstance(raw_suggestions, dict) or not raw_suggestions:
            raise CardFileError(path, "suggestions", "must be a non-empty mapping of kind → {label} (or be left out)")
        for kind, spec in raw_suggestions.items():
            if not isinstance(spec, dict):
                raise CardFileError(path, f"suggestions.{kind}", "must be a mapping with a label")
            label = _require(spec, "label", path, str, f"suggestions.{kind}.")
            labels[str(kind)] = _compile(plain_env, label, path, f"suggestions.{kind}.label")
    selection = _optional(data, "selectionBehavior", path)
    if labels and not selection:
        raise CardFileError(path, "selectionBehavior", "is required when the card has suggestions")
    if selection and selection not in SELECTION_BEHAVIORS:
        raise CardFileError(path, "selectionBehavior", f"must be one of {SELECTION_BEHAVIORS}, got {selection!r}")

    sample = data.get("sampleParams") or {}
    if not isinstance(sample, dict):
        raise CardFileError(path, "sampleParams", "must be a mapping")

    return CardTemplate(
        path=path,
        topic=topic,
        display=_require(data, "display", path),
        indicator=indicator,
        source_label=_require(source, "label", path, str, "source."),
        source_url=source_url,
        source_icon=source_icon,
        summary=_compile(plain_env, _require(data, "summary", path), path, "summary"),
        detail=_compile(md_env, _require(data, "detail", path), path, "detail"),
        suggestion_labels=labels,
        selection_behavior=selection,
        override_reasons=_parse_override_reasons(data.get("overrideReasons"), path),
        links=_parse_links(data.get("links"), path),
        sample_params=sample,
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


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


class Labels(dict):
    """Card wording keyed by the ids the clinical rules emit: group -> id -> text (cards/labels/*.yaml).

    Templates see it as ``labels``: ``labels.text("red-flags", f.id, f.get("label_params"))`` fills the
    ``{placeholders}`` of a label from the id's parameters; a missing id renders as the id itself
    (a test proves every id the rules can emit has a label)."""

    def text(self, group: str, item_id: Any, params: Mapping[str, Any] | None = None) -> str:
        template = self.get(group, {}).get(str(item_id))
        if template is None:
            return str(item_id)
        try:
            return template.format_map(dict(params or {}))
        except (KeyError, IndexError, ValueError):
            return template

    def criterion(self, criterion_id: str, params: Mapping[str, Any] | None = None) -> str:
        """A checklist label; red-flag criteria ("red-flag-<id>") fall back to the red flag's name."""
        if criterion_id not in self.get("criteria", {}) and criterion_id.startswith("red-flag-"):
            return self.text("red-flags", criterion_id.removeprefix("red-flag-"), params)
        return self.text("criteria", criterion_id, params)


def load_labels(cards_dir: Path) -> Labels:
    """Read every cards/labels/*.yaml (mappings ``group: {id: text}``); a group may span files, an id not."""
    labels = Labels()
    for path in sorted((Path(cards_dir) / LABELS_DIR).glob("*.yaml")):
        for group, items in _read_yaml(path).items():
            if not isinstance(items, dict):
                raise CardFileError(path, str(group), "must be a mapping of id to text")
            merged = labels.setdefault(str(group), {})
            for item_id, text in items.items():
                if not isinstance(text, str) or not text.strip():
                    raise CardFileError(path, f"{group}.{item_id}", "must be non-empty text")
                if str(item_id) in merged:
                    raise CardFileError(path, f"{group}.{item_id}", "is defined twice")
                merged[str(item_id)] = text.strip()
    return labels


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
    from .settings import Settings

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
