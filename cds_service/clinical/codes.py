"""Code system URIs and normalisation, so codings from different EHRs compare equal.

EHRs send the same code system under several spellings (OIDs, https, trailing slashes) and ICD-10-CM
codes with or without the dot. WHO ICD-10 (rev 2) is its own system, never an alias of ICD-10-CM: the two
share most codes but not all (WHO has no M54.50 or M48.061), so value sets list WHO codes explicitly.
Everything is reduced to one canonical URI and one code spelling before
any comparison.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"  # WHO ICD-10
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"

DISPLAY_NAMES = {
    SNOMED: "SNOMED",
    ICD10CM: "ICD-10-CM",
    ICD10: "ICD-10",
    LOINC: "LOINC",
    CPT: "CPT",
    RXNORM: "RxNorm",
    ATC: "ATC",
}

# Hierarchical code systems whose codes nest by prefix: "is-a" is evaluated as a prefix match.
PREFIX_SYSTEMS = frozenset({ICD10CM, ICD10, ATC})

_ALIASES: dict[str, str] = {}


def _alias(canonical: str, *aliases: str) -> None:
    for name in (canonical, *aliases):
        _ALIASES[name.lower().rstrip("/")] = canonical


_alias(
    SNOMED,
    "https://snomed.info/sct",
    "urn:oid:2.16.840.1.113883.6.96",
    "snomed",
    "snomedct",
    "snomed-ct",
    "sct",
)
_alias(
    ICD10CM,
    "https://hl7.org/fhir/sid/icd-10-cm",
    "urn:oid:2.16.840.1.113883.6.90",
    "icd-10-cm",
    "icd10cm",
    "http://hl7.org/fhir/sid/icd10cm",
)
_alias(ICD10, "https://hl7.org/fhir/sid/icd-10", "urn:oid:2.16.840.1.113883.6.3", "icd-10", "icd10")
_alias(LOINC, "https://loinc.org", "urn:oid:2.16.840.1.113883.6.1", "loinc")
_alias(
    CPT,
    "https://www.ama-assn.org/go/cpt",
    "http://ama-assn.org/go/cpt",
    "urn:oid:2.16.840.1.113883.6.12",
    "cpt",
    "cpt-4",
)
_alias(RXNORM, "https://www.nlm.nih.gov/research/umls/rxnorm", "urn:oid:2.16.840.1.113883.6.88", "rxnorm")
_alias(ATC, "https://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73", "atc")
_alias(V3_INTERPRETATION, "urn:oid:2.16.840.1.113883.5.83")


def normalize_system(system: object) -> str:
    """Canonical URI for a code system; unknown systems are returned trimmed (compared exactly)."""
    if not isinstance(system, str):
        return ""
    text = system.strip()
    canonical = _ALIASES.get(text.lower().rstrip("/"))
    if canonical:
        return canonical
    lowered = text.lower()
    # SNOMED edition/version URIs (http://snomed.info/sct/900000000000207008/version/...) are still SNOMED.
    if lowered.startswith(("http://snomed.info/sct/", "https://snomed.info/sct/")):
        return SNOMED
    return text


def normalize_code(system: str, code: object) -> str:
    """Comparable spelling of a code: ICD-10(-CM) without dot and upper case, ATC upper case."""
    if not isinstance(code, str):
        return ""
    text = code.strip()
    if system in (ICD10CM, ICD10):
        return text.replace(".", "").upper()
    if system == ATC:
        return text.upper()
    return text


def iter_codings(concept: Any) -> Iterator[dict[str, Any]]:
    """The codings of a CodeableConcept dict (tolerates junk: yields only dict codings)."""
    if isinstance(concept, dict):
        codings = concept.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, dict):
                    yield coding


def concept_text(concept: Any) -> str | None:
    """Best human text of a CodeableConcept: its text, else the first coding display, else system|code."""
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    for coding in iter_codings(concept):
        display = coding.get("display")
        if isinstance(display, str) and display.strip():
            return display.strip()
    for coding in iter_codings(concept):
        if coding.get("code"):
            return describe_coding(coding)
    return None


def describe_coding(coding: dict[str, Any]) -> str:
    """ "Low back pain (SNOMED 279039007)" style text for evidence."""
    system = normalize_system(coding.get("system"))
    name = DISPLAY_NAMES.get(system, system or "code")
    code = coding.get("code") or "?"
    display = coding.get("display")
    return f"{display} ({name} {code})" if display else f"{name} {code}"
