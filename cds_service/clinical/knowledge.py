"""Clinical knowledge: value sets and thresholds, loaded once at start-up.

Value sets are FHIR ValueSet JSON files (cds_service/data/valuesets/), one per code list, so that a
site can read, review and extend them with ordinary FHIR tooling. Thresholds come from
cds_service/data/thresholds.yaml. An optional site configuration YAML adds local codes to any value
set and overrides any threshold; it is validated strictly because a silent typo in a clinical
threshold is worse than a failed start.

Matching conventions (documented in docs/clinical-logic.md):
* ``compose.include.concept`` -- exact codes (after system/code normalisation, see codes.py).
* ``compose.include.filter`` ``{"property": "concept", "op": "is-a", "value": "M45"}`` -- only for
  ICD-10-CM and ATC, whose codes nest by prefix: matches every code starting with the value
  (dots ignored). There is no terminology server, so is-a is refused for SNOMED/LOINC/CPT/RxNorm.
* ``compose.include.filter`` ``{"property": "code", "op": "regex", "value": "..."}`` -- full match on
  the normalised code (used for the ICD-10-CM range C00-C96).
* ``compose.include.valueSet`` -- union with other value sets of this product (by canonical URL).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cds_service.clinical.codes import PREFIX_SYSTEMS, normalize_code, normalize_system
from cds_service.clinical.imaging_text import ImagingText, ImagingTextError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
VALUESET_DIR = DATA_DIR / "valuesets"
THRESHOLDS_FILE = DATA_DIR / "thresholds.yaml"
FHIR_DIR = DATA_DIR / "fhir"

CANONICAL_BASE = "http://example.org/fhir/lbp-cds"
VALUESET_BASE = f"{CANONICAL_BASE}/ValueSet/"
QUESTIONNAIRE_URL = f"{CANONICAL_BASE}/Questionnaire/back-pain-assessment"
CARD_TOPIC_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/card-topic"
OVERRIDE_REASON_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/override-reason"
VERIFICATION_EXT = f"{CANONICAL_BASE}/StructureDefinition/verification-status"
MATCH_BY_NAME_EXT = f"{CANONICAL_BASE}/StructureDefinition/match-medication-by-name"

# Value sets whose codes the protocol layer uses to build FHIR token searches (prefetch templates).
SEARCH_TOKEN_VALUESETS = ("crp", "hla-b27", "body-temperature", "symptom-findings")


class KnowledgeError(ValueError):
    """Invalid knowledge files or site configuration; the message names the file and the offending key."""


@dataclass(frozen=True)
class Thresholds:
    """Every configurable clinical threshold (defaults in data/thresholds.yaml; meaning in docs)."""

    fever_temperature_celsius: float
    fever_window_days: int
    trauma_window_days: int
    steroid_min_months: int
    fracture_risk_age_years: int
    age_mention_years: int
    new_incontinence_window_days: int
    imaging_defer_weeks: int
    conservative_care_min_weeks: int
    prior_imaging_window_months: int
    crp_upper_limit_mg_per_l: float
    rheumatology_referral_window_months: int
    crp_lookback_months: int
    hla_b27_lookback_months: int
    axspa_entry_onset_age_years: int
    axspa_entry_min_months: int
    axspa_early_onset_age_years: int
    self_management_max_weeks: int
    minimum_age_years: int
    chronic_management_min_age_years: int
    exercise_programme_lookback_months: int

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> Thresholds:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise KnowledgeError(f"{source}: unknown threshold(s) {unknown}; known: {sorted(known)}")
        missing = sorted(set(known) - set(data))
        if missing:
            raise KnowledgeError(f"{source}: missing threshold(s) {missing}")
        values = {name: _check_threshold(name, data[name], known[name].type, source) for name in known}
        return cls(**values)

    def with_overrides(self, overrides: Mapping[str, Any], source: str) -> Thresholds:
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in overrides.items():
            if name not in merged:
                raise KnowledgeError(f"{source}: thresholds.{name}: unknown threshold; known: {sorted(merged)}")
            merged[name] = value
        return Thresholds.from_mapping(merged, source)


def _check_threshold(name: str, value: Any, type_name: Any, source: str) -> float | int:
    wants_float = type_name in (float, "float")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KnowledgeError(f"{source}: thresholds.{name}: expected a number, got {value!r}")
    if not wants_float and not (isinstance(value, int) or float(value).is_integer()):
        raise KnowledgeError(f"{source}: thresholds.{name}: expected a whole number, got {value!r}")
    if value <= 0:
        raise KnowledgeError(f"{source}: thresholds.{name}: must be greater than 0, got {value!r}")
    return float(value) if wants_float else int(value)


@dataclass
class ValueSet:
    """A compiled value set: exact codes, prefixes (is-a on ICD-10-CM/ATC), regexes, and unions."""

    id: str
    url: str
    title: str
    description: str
    exact: dict[tuple[str, str], str] = field(default_factory=dict)  # (system, normalised code) -> display
    token_codes: dict[tuple[str, str], str] = field(default_factory=dict)  # (system, code as written) -> ""
    prefixes: dict[str, set[str]] = field(default_factory=dict)
    regexes: dict[str, list[re.Pattern[str]]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # lower-case medication ingredient names (name fallback)
    includes: list[str] = field(default_factory=list)  # canonical URLs of unioned value sets
    # compiled name patterns, rebuilt whenever `names` changes (see _name_patterns)
    _name_cache: Any = field(default=None, init=False, repr=False, compare=False)
    # contains() answers by (system, code) exactly as written: charts repeat a few codes thousands of times.
    # Bounded (MEMO_MAX entries, then no more are added); emptied by every change to the value set.
    _memo: dict[tuple[str, str], bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    MEMO_MAX = 8192

    def add_code(self, system: str, code: str, display: str | None) -> None:
        self._memo.clear()
        system = normalize_system(system)
        self.exact[(system, normalize_code(system, code))] = display or ""
        self.token_codes[(system, code.strip())] = ""

    def add_prefix(self, system: str, prefix: str) -> None:
        self._memo.clear()
        system = normalize_system(system)
        self.prefixes.setdefault(system, set()).add(normalize_code(system, prefix))

    def add_regex(self, system: str, pattern: str) -> None:
        self._memo.clear()
        self.regexes.setdefault(normalize_system(system), []).append(re.compile(pattern))

    def merge(self, other: ValueSet) -> None:
        self._memo.clear()
        self.exact.update(other.exact)
        self.token_codes.update(other.token_codes)
        for system, prefixes in other.prefixes.items():
            self.prefixes.setdefault(system, set()).update(prefixes)
        for system, patterns in other.regexes.items():
            self.regexes.setdefault(system, []).extend(patterns)
        self.names.update(other.names)

    def contains(self, system: object, code: object) -> bool:
        if type(system) is str and type(code) is str:
            key = (system, code)
            known = self._memo.get(key)
            if known is None:
                known = self._contains(system, code)
                if len(self._memo) < self.MEMO_MAX:
                    self._memo[key] = known
            return known
        return self._contains(system, code)

    def _contains(self, system: object, code: object) -> bool:
        sys_n = normalize_system(system)
        code_n = normalize_code(sys_n, code)
        if not code_n:
            return False
        if (sys_n, code_n) in self.exact:
            return True
        prefixes = self.prefixes.get(sys_n)
        if prefixes and any(code_n.startswith(p) for p in prefixes):
            return True
        patterns = self.regexes.get(sys_n)
        return bool(patterns) and any(p.fullmatch(code_n) for p in patterns)

    def match(self, concept: Any) -> dict[str, Any] | None:
        """The first coding of a CodeableConcept dict that belongs to this value set, else None."""
        # iter_codings() inlined: this runs for every coded resource of the chart
        if not isinstance(concept, dict):
            return None
        codings = concept.get("coding")
        if not isinstance(codings, list):
            return None
        contains = self.contains
        for coding in codings:
            if isinstance(coding, dict) and contains(coding.get("system"), coding.get("code")):
                return coding
        return None

    def match_name(self, text: object) -> str | None:
        """Medication-name fallback: the ingredient name found as a whole word in free text, else None."""
        if not self.names or not isinstance(text, str):
            return None
        lowered = text.lower()
        any_name, ordered = self._name_patterns()
        if any_name.search(lowered) is None:  # one pass over the text answers the common "no"
            return None
        for name, pattern in ordered:
            if pattern.search(lowered):
                return name
        return None

    def _name_patterns(self) -> tuple[re.Pattern[str], tuple[tuple[str, re.Pattern[str]], ...]]:
        """Compiled once per set of names: an alternation of all names, and one pattern per name in sorted
        order (the first whole-word match in sorted order is the answer, as before)."""
        key = frozenset(self.names)
        cached = self._name_cache
        if cached is None or cached[0] != key:
            ordered = sorted(key)
            any_name = re.compile(r"\b(?:" + "|".join(re.escape(name) for name in ordered) + r")\b")
            per_name = tuple((name, re.compile(rf"\b{re.escape(name)}\b")) for name in ordered)
            cached = (key, any_name, per_name)
            self._name_cache = cached
        return cached[1], cached[2]

    def display(self, system: object, code: object) -> str | None:
        sys_n = normalize_system(system)
        return self.exact.get((sys_n, normalize_code(sys_n, code))) or None


class Knowledge:
    """Value sets + thresholds. Build with :meth:`load`; immutable in use (shared across requests)."""

    def __init__(
        self, valuesets: dict[str, ValueSet], thresholds: Thresholds, imaging_text: ImagingText | None = None
    ) -> None:
        self._valuesets = valuesets
        self.thresholds = thresholds
        self.imaging_text = imaging_text if imaging_text is not None else _imaging_text()
        self._any = ValueSet("*", "", "all codes", "")
        for vs in valuesets.values():
            self._any.merge(vs)
        # valuesets_matching() per (system, code) as written; bounded like ValueSet's own memo
        self._sets_of_code: dict[tuple[str, str], frozenset[str]] = {}

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        site_config: Path | None = None,
        *,
        valueset_dir: Path = VALUESET_DIR,
        thresholds_file: Path = THRESHOLDS_FILE,
    ) -> Knowledge:
        """Load the shipped knowledge and apply the optional site configuration (raises KnowledgeError)."""
        raw_sets = _read_valueset_files(valueset_dir)
        try:
            defaults = yaml.safe_load(thresholds_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise KnowledgeError(f"{thresholds_file}: cannot read thresholds: {exc}") from exc
        if not isinstance(defaults, dict):
            raise KnowledgeError(f"{thresholds_file}: expected a mapping of threshold names to numbers")
        thresholds = Thresholds.from_mapping(defaults, str(thresholds_file))
        compiled = {vs_id: _compile(vs_id, raw, source) for vs_id, (raw, source) in raw_sets.items()}
        if site_config is not None:
            thresholds = _apply_site_config(Path(site_config), compiled, thresholds)
        _resolve_includes(compiled)
        return cls(compiled, thresholds, _imaging_text())

    # -- queries ---------------------------------------------------------------------------------
    @property
    def valueset_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._valuesets))

    def valueset(self, vs_id: str) -> ValueSet:
        try:
            return self._valuesets[vs_id]
        except KeyError:
            raise KeyError(f"unknown value set {vs_id!r}") from None

    def match(self, vs_id: str, concept: Any) -> dict[str, Any] | None:
        return self.valueset(vs_id).match(concept)

    def valuesets_matching(self, concept: Any) -> frozenset[str]:
        """Ids of every value set whose ``match(concept)`` finds a coding, answered for all sets at once.

        Why: the facts ask ~25 value sets about each relevant Condition and Observation (a red flag,
        a symptom, a diagnosis each); this lets them skip, with one set lookup, the sets that do not
        hold the concept, and call ``match`` only for those that do."""
        if not isinstance(concept, dict):
            return frozenset()
        codings = concept.get("coding")
        if not isinstance(codings, list):
            return frozenset()
        found: frozenset[str] = frozenset()
        for coding in codings:
            if isinstance(coding, dict):
                found = found | self._sets_of(coding.get("system"), coding.get("code"))
        return found

    def _sets_of(self, system: object, code: object) -> frozenset[str]:
        if not self._any.contains(system, code):
            return frozenset()
        if type(system) is str and type(code) is str:
            key = (system, code)
            known = self._sets_of_code.get(key)
            if known is None:
                known = frozenset(i for i, vs in self._valuesets.items() if vs.contains(system, code))
                if len(self._sets_of_code) < ValueSet.MEMO_MAX:
                    self._sets_of_code[key] = known
            return known
        return frozenset(i for i, vs in self._valuesets.items() if vs.contains(system, code))

    def is_known_code(self, concept: Any) -> bool:
        """Cheap relevance test: does any coding belong to any value set of the product?"""
        # ValueSet.match inlined (called once per coded resource of the chart)
        if not isinstance(concept, dict):
            return False
        codings = concept.get("coding")
        if not isinstance(codings, list):
            return False
        contains = self._any.contains
        for coding in codings:
            if isinstance(coding, dict) and contains(coding.get("system"), coding.get("code")):
                return True
        return False

    def is_known_medication_name(self, text: object) -> bool:
        return self._any.match_name(text) is not None

    def search_tokens(self, valueset_id: str) -> str:
        """'system|code,...' for a FHIR token search (prefix/regex rules cannot be listed: left out)."""
        vs = self.valueset(valueset_id)
        return ",".join(f"{system}|{code}" for system, code in sorted(vs.token_codes))


def _imaging_text() -> ImagingText:
    try:
        return ImagingText.load()
    except ImagingTextError as exc:
        raise KnowledgeError(str(exc)) from exc


def _read_valueset_files(directory: Path) -> dict[str, tuple[dict[str, Any], str]]:
    result: dict[str, tuple[dict[str, Any], str]] = {}
    files = sorted(directory.glob("*.json"))
    if not files:
        raise KnowledgeError(f"{directory}: no value set files found")
    for path in files:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise KnowledgeError(f"{path}: cannot read value set: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("resourceType") != "ValueSet" or not raw.get("id"):
            raise KnowledgeError(f"{path}: not a FHIR ValueSet with an id")
        if raw["id"] in result:
            raise KnowledgeError(f"{path}: duplicate value set id {raw['id']!r}")
        result[raw["id"]] = (raw, str(path))
    return result


def _compile(vs_id: str, raw: dict[str, Any], source: str) -> ValueSet:
    vs = ValueSet(
        id=vs_id,
        url=raw.get("url") or VALUESET_BASE + vs_id,
        title=raw.get("title") or vs_id,
        description=raw.get("description") or "",
    )
    by_name = any(
        ext.get("url") == MATCH_BY_NAME_EXT and ext.get("valueBoolean") is True for ext in raw.get("extension", [])
    )
    for include in (raw.get("compose") or {}).get("include", []):
        system = include.get("system")
        for concept in include.get("concept", []):
            vs.add_code(system, concept["code"], concept.get("display"))
            if by_name and concept.get("display") and normalize_system(system) != "http://www.whocc.no/atc":
                vs.names.add(concept["display"].lower())
        for flt in include.get("filter", []):
            prop, op, value = flt.get("property"), flt.get("op"), flt.get("value")
            if op == "is-a" and prop == "concept":
                if normalize_system(system) not in PREFIX_SYSTEMS:
                    raise KnowledgeError(f"{source}: is-a filter on {system!r} needs a terminology server; list codes")
                vs.add_prefix(system, value)
            elif op == "regex" and prop == "code":
                try:
                    vs.add_regex(system, value)
                except re.error as exc:
                    raise KnowledgeError(f"{source}: invalid regex {value!r}: {exc}") from exc
            else:
                raise KnowledgeError(f"{source}: unsupported filter {flt!r}")
        vs.includes.extend(include.get("valueSet", []))
    return vs


def _resolve_includes(valuesets: dict[str, ValueSet]) -> None:
    by_url = {vs.url: vs for vs in valuesets.values()}

    def resolve(vs: ValueSet, stack: tuple[str, ...]) -> None:
        for url in list(vs.includes):
            target = by_url.get(url.split("|")[0])
            if target is None:
                raise KnowledgeError(f"value set {vs.id!r} includes unknown value set {url!r}")
            if target.id in stack:
                raise KnowledgeError(f"value set include cycle: {' -> '.join((*stack, target.id))}")
            resolve(target, (*stack, target.id))
            vs.merge(target)
        vs.includes.clear()

    for vs in valuesets.values():
        resolve(vs, (vs.id,))


def _apply_site_config(path: Path, valuesets: dict[str, ValueSet], thresholds: Thresholds) -> Thresholds:
    source = str(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise KnowledgeError(f"{source}: cannot read site configuration: {exc}") from exc
    if config is None:
        return thresholds
    if not isinstance(config, dict):
        raise KnowledgeError(f"{source}: expected a mapping with 'valuesets' and/or 'thresholds'")
    # rollout and suppression are go-live governance, read by cds_service.rollout; card_detail (compact | full)
    # is a presentation setting read by cds_service/cards.py: neither is clinical knowledge
    unknown = sorted(set(config) - {"valuesets", "thresholds", "rollout", "suppression", "card_detail"})
    if unknown:
        raise KnowledgeError(f"{source}: unknown top-level key(s) {unknown}; allowed: valuesets, thresholds, "
                             "rollout, suppression, card_detail")
    sets = config.get("valuesets") or {}
    if not isinstance(sets, dict):
        raise KnowledgeError(f"{source}: valuesets: expected a mapping of value set id to a list of codes")
    for vs_id, entries in sets.items():
        if vs_id not in valuesets:
            raise KnowledgeError(f"{source}: valuesets.{vs_id}: unknown value set id; known: {sorted(valuesets)}")
        if not isinstance(entries, list):
            raise KnowledgeError(f"{source}: valuesets.{vs_id}: expected a list of {{system, code|prefix}}")
        for index, entry in enumerate(entries):
            _add_site_entry(valuesets[vs_id], entry, f"{source}: valuesets.{vs_id}[{index}]")
    overrides = config.get("thresholds") or {}
    if not isinstance(overrides, dict):
        raise KnowledgeError(f"{source}: thresholds: expected a mapping of threshold name to number")
    return thresholds.with_overrides(overrides, source)


def _add_site_entry(vs: ValueSet, entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise KnowledgeError(f"{where}: expected a mapping with 'system' and 'code' (or 'prefix')")
    unknown = sorted(set(entry) - {"system", "code", "prefix", "display"})
    if unknown:
        raise KnowledgeError(f"{where}: unknown key(s) {unknown}; allowed: system, code, prefix, display")
    system = entry.get("system")
    if not isinstance(system, str) or not system.strip():
        raise KnowledgeError(f"{where}: 'system' is required (a code system URI, e.g. a local Epic OID)")
    has_code, has_prefix = "code" in entry, "prefix" in entry
    if has_code == has_prefix:
        raise KnowledgeError(f"{where}: give exactly one of 'code' or 'prefix'")
    value = entry.get("code") if has_code else entry.get("prefix")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise KnowledgeError(f"{where}: '{'code' if has_code else 'prefix'}' must be a non-empty string")
    display = entry.get("display")
    if display is not None and not isinstance(display, str):
        raise KnowledgeError(f"{where}: 'display' must be a string")
    if has_code:
        vs.add_code(system, value, display)
    else:
        vs.add_prefix(system, value)
