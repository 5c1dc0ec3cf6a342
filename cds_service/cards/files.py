"""Card files: loading and validating cards/<topic>.yaml, partials and labels (errors name file and field)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from jinja2 import (
    DictLoader,
    Template,
    TemplateError,
    Undefined,
)
from jinja2.sandbox import SandboxedEnvironment

from cds_service.clinical.knowledge import OVERRIDE_REASON_SYSTEM

from .text import (
    _day,
    _evidence_brief,
    _finalize_markdown,
    _finalize_plain,
    _human_list,
    _lower_first,
    _prefixed,
    _without_code,
    escape_markdown,
    plain_text,
    safe_url,
)
from .vocabulary import (
    CARD_DETAIL_MODES,
    INDICATORS,
    LABELS_DIR,
    LINK_TYPES,
    OVERRIDE_REASON_FILE,
    OVERRIDE_REASONS,
    SELECTION_BEHAVIORS,
    TOPICS,
)

log = logging.getLogger("cds_service.cards")

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


