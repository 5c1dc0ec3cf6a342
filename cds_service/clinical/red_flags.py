"""Red flags on patient-view (spec sections 1 and 4): `red-flag`, replaced by `cauda-equina` when
cauda equina features are present. Both need an active back pain episode: the flags are about the back
pain, not a general problem list screen. Age over 50 alone is not a red flag (params: age_over_50)."""

from __future__ import annotations

from cds_service.clinical.citations import ACP_APS_2007, ACR_LBP_2021, NICE_NG59
from cds_service.clinical.decision_params import base_params, criterion, red_flag_criteria, red_flag_params
from cds_service.clinical.facts import Finding, PatientFacts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Decision, State

CITATIONS = (ACP_APS_2007, ACR_LBP_2021, NICE_NG59)


def evaluate_red_flags(facts: PatientFacts, knowledge: Knowledge) -> list[Decision]:
    if not facts.episode.present:
        return []
    flags = facts.met_red_flags()
    if not flags:
        return []
    cauda_equina = any(f.category == "cauda-equina" for f in flags)
    topic = "cauda-equina" if cauda_equina else "red-flag"
    episode = criterion("red-flag-back-pain-episode", Finding(State.MET, facts.episode.conditions))
    return [
        Decision(
            topic=topic,
            rule="red-flags.cauda-equina" if cauda_equina else "red-flags.any",
            citations=CITATIONS,
            criteria=(episode, *red_flag_criteria(facts)),
            params={**base_params(facts, knowledge), **red_flag_params(flags)},
        )
    ]
