"""PatientFacts: everything the rules need, derived once per hook call from the PatientRecord.

model.py (fact types), triage.py (relevance filter), validation.py (FHIR validation), red_flag_catalogue.py (the red
flags as data), builder.py with episode.py, red_flag_findings.py and history.py (the facts).
"""

from __future__ import annotations

from cds_service.clinical.facts.builder import build_facts
from cds_service.clinical.facts.model import NOT_DOCUMENTED, Episode, Finding, PatientFacts, RedFlag, combine, only_met
from cds_service.clinical.facts.red_flag_catalogue import CATEGORY_ORDER, RED_FLAGS

__all__ = [
    "CATEGORY_ORDER",
    "NOT_DOCUMENTED",
    "RED_FLAGS",
    "Episode",
    "Finding",
    "PatientFacts",
    "RedFlag",
    "build_facts",
    "combine",
    "only_met",
]
