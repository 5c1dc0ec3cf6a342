"""Card vocabulary: topics and override reasons from the shipped CodeSystems, modes, limits."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from cds_service.clinical.knowledge import CARD_TOPIC_SYSTEM, FHIR_DIR
from cds_service.clinical.model import State

log = logging.getLogger("cds_service.cards")



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


