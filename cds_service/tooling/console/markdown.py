"""Card detail Markdown → HTML that is safe to insert into the console page.

Card details are GitHub-flavoured Markdown that can carry patient data (condition names, free
text). Two independent layers keep data from becoming markup, so one mistake is not enough:

1. markdown-it-py with ``html`` disabled: raw HTML in the source is emitted as text, and links
   with ``javascript:``/``data:`` URLs are not turned into links.
2. nh3 (ammonia) then keeps only the tags Markdown produces, only ``href``/``title`` attributes,
   only http(s)/mailto URLs, and no images (no requests to other hosts from a card).

The page adds a third layer: a Content-Security-Policy without inline script, and Trusted Types,
so only this module's output can be assigned as HTML (see console/static/common.js).
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = frozenset(
    {
        "p",
        "br",
        "hr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "strong",
        "em",
        "del",
        "s",
        "code",
        "pre",
        "blockquote",
        "ul",
        "ol",
        "li",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "a",
    }
)
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
MAX_MARKDOWN_CHARS = 200_000

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)


def render_markdown(text: str) -> str:
    """Sanitised HTML for one card detail (empty string for empty input)."""
    if not text:
        return ""
    html = _parser.render(text[:MAX_MARKDOWN_CHARS])
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style"},
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )
