"""The fact types the rules read: three-valued Findings, red flags, the back pain episode, PatientFacts.

Every fact carries its Evidence and a State: met / not met / not documented. Display names are not
here: red flags and criteria carry ids, and their words live in cards/labels/ (one owner per text).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from cds_service.clinical import labs
from cds_service.clinical.model import Evidence, State


@dataclass(frozen=True)
class Finding:
    """A three-valued fact with the data behind it."""

    state: State
    evidence: tuple[Evidence, ...] = ()
    note: str | None = None

    @property
    def met(self) -> bool:
        return self.state is State.MET


NOT_DOCUMENTED = Finding(State.NOT_DOCUMENTED)


def combine(*findings: Finding) -> Finding:
    """Any source that shows the fact wins; otherwise any explicit 'no'; otherwise not documented."""
    notes = "; ".join(dict.fromkeys(f.note for f in findings if f.note)) or None
    for state in (State.MET, State.NOT_MET):
        chosen = [f for f in findings if f.state is state]
        if chosen:
            evidence = tuple(e for f in chosen for e in f.evidence)
            chosen_notes = "; ".join(dict.fromkeys(f.note for f in chosen if f.note)) or None
            return Finding(state, evidence, chosen_notes if state is State.MET else notes)
    return Finding(State.NOT_DOCUMENTED, (), notes)


def only_met(finding: Finding) -> Finding:
    """Keep a supporting source only when it shows the fact (its 'no' must not mask another source)."""
    return finding if finding.met else NOT_DOCUMENTED


@dataclass(frozen=True)
class RedFlag:
    """One red flag: its id (label in cards/labels/red-flags.yaml), category and finding.

    label_params fill the label's placeholders (e.g. the configured trauma window in days)."""

    id: str
    category: str  # cauda-equina, neurological-deficit, malignancy, infection, fracture
    finding: Finding
    label_params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Episode:
    """The current back pain episode (from active LBP/radicular Conditions)."""

    conditions: tuple[Evidence, ...] = ()
    onset: date | None = None
    onset_source: str | None = None
    onset_evidence: Evidence | None = None
    onset_note: str | None = None
    duration_days: int | None = None
    onset_age: int | None = None
    # (rev 2) a partial birthDate gives an age range at onset: (youngest, oldest) completed years
    onset_age_range: tuple[int, int] | None = None

    @property
    def present(self) -> bool:
        return bool(self.conditions)

    @property
    def duration_weeks(self) -> int | None:
        return None if self.duration_days is None else self.duration_days // 7

    @property
    def onset_from_recorded_date(self) -> bool:
        return self.onset_source == "recordedDate"


@dataclass(frozen=True)
class PatientFacts:
    today: date
    patient_id: str
    birth_date: date | None  # the latest plausible birthday (youngest age) for a partial birthDate
    age: int | None  # exact age in completed years; None when unknown or when the birthDate is partial
    sex: str | None
    episode: Episode
    radicular: Finding
    red_flags: tuple[RedFlag, ...]
    conservative_care: Finding
    prior_imaging: tuple[Evidence, ...]
    crp: labs.LabResult
    crp_recent: bool
    hla_b27: labs.LabResult
    hla_b27_recent: bool
    symptoms: Mapping[str, Finding]
    axspa_diagnosis: tuple[Evidence, ...]
    rheumatology_referrals: tuple[Evidence, ...]
    back_pain_conditions: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # "Condition/x" -> json
    skipped: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    # (rev 2) age range (youngest, oldest) in completed years; equal ends when the birthDate is a full date
    age_range: tuple[int, int] | None = None
    birth_date_earliest: date | None = None

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    @property
    def age_text(self) -> str | None:
        """ "69" or, for a partial birthDate, "69–70" (spec section 1, rev 2)."""
        if self.age_range is None:
            return None
        low, high = self.age_range
        return str(low) if low == high else f"{low}–{high}"

    def met_red_flags(self) -> list[RedFlag]:
        return [flag for flag in self.red_flags if flag.finding.met]

    def symptom(self, key: str) -> Finding:
        return self.symptoms.get(key, NOT_DOCUMENTED)
