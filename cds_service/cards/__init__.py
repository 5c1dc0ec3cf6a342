"""Decision + cards/<topic>.yaml → CDS Hooks 2.0 card JSON.

Card wording lives in YAML files a clinician can review (see cards/README.md); this package only
loads, validates and renders them. Why it is built this way:

* The card files are loaded and validated ONCE at start-up (`CardCatalog.load`). A broken card
  file must stop the service from starting with an error naming the file and the field, never
  fail a clinician's request later.
* Templates run in a Jinja2 *sandboxed* environment with HTML autoescape OFF (the detail is
  Markdown, not HTML). Every value a template prints with ``{{ ... }}`` is escaped automatically
  (Jinja ``finalize``) because values come from patient records: a condition display such as
  ``*urgent* <img src=x>`` must show as text, not become Markdown or HTML. Summaries and
  suggestion labels are plain text, so they are only whitespace-normalised.
* The renderer never emits ``null``, ``""``, ``[]`` or ``{}`` (CDS Hooks 2.0 JSON rules).

Modules: ``vocabulary`` (topics and override reasons from the shipped CodeSystems, limits),
``text`` (escaping and Jinja filters), ``files`` (card files, partials, labels), ``catalog``
(the loaded catalog and rendering).
"""

from cds_service.clinical.knowledge import OVERRIDE_REASON_SYSTEM

from .catalog import CardCatalog, default_cards_dir, get_default_catalog, prune, render, set_default_catalog
from .files import CardFileError, CardRenderError, CardTemplate, Labels, card_detail_setting, load_labels
from .text import SafeMarkdown, escape_markdown, plain_text, safe_url
from .vocabulary import (
    CARD_DETAIL_MODES,
    OVERRIDE_REASONS,
    STATE_LABELS,
    SUMMARY_MAX,
    TOPIC_CODESYSTEM_FILE,
    TOPIC_SYSTEM,
    TOPICS,
)

__all__ = [
    "CARD_DETAIL_MODES",
    "OVERRIDE_REASONS",
    "OVERRIDE_REASON_SYSTEM",
    "STATE_LABELS",
    "SUMMARY_MAX",
    "TOPICS",
    "TOPIC_CODESYSTEM_FILE",
    "TOPIC_SYSTEM",
    "CardCatalog",
    "CardFileError",
    "CardRenderError",
    "CardTemplate",
    "Labels",
    "SafeMarkdown",
    "card_detail_setting",
    "default_cards_dir",
    "escape_markdown",
    "get_default_catalog",
    "load_labels",
    "plain_text",
    "prune",
    "render",
    "safe_url",
    "set_default_catalog",
]
