"""Patient-derived text must never become Markdown or HTML in a card."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from cds_service.cards import CardCatalog, escape_markdown, plain_text, safe_url
from cds_service.clinical.model import Criterion, Decision, Evidence, State

from .conftest import decision

ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "*bold* _em_ **strong** ~~strike~~ `code`",
    "[click](https://evil.example/phish)",
    "![img](https://evil.example/x.png)",
    "https://evil.example/autolink and www.evil.example and mail@evil.example",
    "# Heading\n- list item\n> quote\n1. numbered",
    "| table | row |",
    "line1\n\n<div>block html</div>",
    "&lt;already&gt; &amp; entity",
    "\\*escaped\\*",
]

md = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table").enable("strikethrough")


def rendered_html(text: str) -> str:
    return md.render(text)


@pytest.mark.parametrize("attack", ATTACKS)
def test_escaped_value_renders_as_literal_text(attack: str) -> None:
    html = rendered_html(f"Data: {escape_markdown(attack)}")
    for tag in (
        "<script",
        "<img",
        "<a ",
        "<em>",
        "<strong>",
        "<code>",
        "<h1",
        "<li",
        "<blockquote",
        "<table",
        "<div",
        "<s>",
        "<del>",
    ):
        assert tag not in html, (attack, html)
    assert html.count("<p>") == 1, "a value must not start a new block"


def test_escaping_keeps_text_legible() -> None:
    assert (
        escape_markdown("Low back pain (SNOMED 279039007), 2026-05-01")
        == "Low back pain (SNOMED 279039007), 2026-05-01"
    )
    assert escape_markdown("12.5 mg/L") == "12.5 mg/L"
    assert escape_markdown("- starts like a list") == "\\- starts like a list"
    assert escape_markdown("1. starts like a list") == "1\\. starts like a list"
    assert escape_markdown(None) == ""


def test_plain_text_and_urls() -> None:
    assert plain_text("a\n\tb \x00 c") == "a b c"
    assert safe_url("javascript:alert(1)") == "#"
    assert safe_url("/relative") == "#"
    assert safe_url("https://www.nice.org.uk/guidance/ng59") == "https://www.nice.org.uk/guidance/ng59"
    assert safe_url("https://x.example/a b)") == "https://x.example/a%20b%29"


def test_card_detail_escapes_every_data_value(catalog: CardCatalog) -> None:
    evil = "<img src=x onerror=alert(1)> *urgent* [link](https://evil.example)"
    base = decision(catalog, "red-flag")
    crafted = Decision(
        **{
            **base.__dict__,
            "criteria": (
                Criterion(
                    "red-flag-history-of-cancer",
                    State.MET,
                    (Evidence("Condition/1", evil, "2026-01-01", evil),),
                    note=evil,
                ),
            ),
            "params": {
                **base.params,
                "red_flags": [
                    {"id": evil, "category": "malignancy", "evidence": [evil]}
                ],
                "preferred_imaging": [{"category": "malignancy", "id": evil}],
            },
        }
    )
    card = catalog.render(crafted, {"missing": [evil]})
    html = rendered_html(card["detail"])
    assert "<img" not in html and 'evil.example"' not in html and "<em>urgent" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown as text
    # the summary is plain text: no escaping artefacts, no line breaks
    assert "\n" not in card["summary"]


def test_citation_titles_are_escaped_but_links_work(catalog: CardCatalog) -> None:
    html = rendered_html(catalog.render(decision(catalog, "axspa-hla-b27"), detail="full")["detail"])
    assert '<a href="https://www.nice.org.uk/guidance/ng65">NICE NG65' in html
