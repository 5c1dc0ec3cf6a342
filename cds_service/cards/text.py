"""Text handling for card templates: Markdown escaping of patient data, plain text, Jinja filters."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import (
    Undefined,
)

from .vocabulary import _CODE_SUFFIX

log = logging.getLogger("cds_service.cards")

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

