"""Synthetic fixture patients: loading with date shifting, in-memory prefetch, example requests.

Fixtures (fixtures/patients/<slug>.json) are FHIR R4 transaction Bundles written with absolute
dates relative to an ANCHOR date (fixtures/manifest.yaml, ``anchor``). Clinical meaning depends on
"now" (a 6-week-old episode, a temperature 14 days ago, a patient who turned 70 today), so fixtures
are shifted to the evaluation day before use. Two shift modes, chosen per fixture in the manifest
(``date_shift``), because no single shift can preserve both day counts and calendar months:

* ``days`` (default): every date moves by (shift_to − anchor) days. Day-based thresholds (6 weeks,
  14 days, 90 days) keep their exact meaning.
* ``calendar``: every date keeps its distance from "now" in whole calendar months plus days, so
  month-based thresholds ("more than 3 months", 12-month windows) keep their meaning. When a month
  end makes the exact date impossible (31 May − 3 months), the side of the boundary is preserved.

In both modes ``birthDate`` is then nudged by up to two days, if needed, so that the patient's age
in completed years on every other date of the fixture (and on "now") is what it was at the anchor:
leap days would otherwise turn "exactly 35 at onset" into "34". A birth YEAR alone ("1956", clinical
rules rev 2: an age range) moves by the difference in calendar years, so the range stays the same
(except when "now" is 31 December, where a year-only birth date gives one age).

``prefetch_for`` executes the service's prefetch templates against a fixture's resources, so tests,
the validation report and the console can build full-prefetch requests without a FHIR server.

Command line: ``cds-service fixtures requests`` regenerates fixtures/requests/.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml

from cds_service.clinical.dates import add_months, completed_years
from cds_service.prefetch import render_template
from cds_service.prefetch_window import parse_instant
from cds_service.settings import PROJECT_ROOT

FIXTURES_DIR = PROJECT_ROOT / "fixtures"  # a source checkout; an installed wheel takes --fixtures
DEFAULT_ANCHOR = date(2026, 6, 1)
HOOKS = ("patient-view", "order-select", "order-sign")
EXAMPLE_FHIR_SERVER = "http://127.0.0.1:8090/fhir"
EXAMPLE_USER = "Practitioner/example-clinician"
PLACEHOLDER_TOKEN = "placeholder-token-not-a-secret"

# --------------------------------------------------------------------------------------------
# Date shifting
# --------------------------------------------------------------------------------------------

# FHIR elements of type date, dateTime or instant that fixtures use (any resource, any depth).
DATE_KEYS = frozenset(
    {
        "birthDate",
        "deceasedDateTime",
        "onsetDateTime",
        "abatementDateTime",
        "recordedDate",
        "effectiveDateTime",
        "effectiveInstant",
        "issued",
        "authoredOn",
        "authored",
        "occurrenceDateTime",
        "performedDateTime",
        "started",
        "date",
        "dateAsserted",
        "lastUpdated",
        "timestamp",
        "start",
        "end",
        "valueDate",
        "valueDateTime",
        "valueInstant",
        "answerDateTime",
        "bornDate",
        "deceasedDate",
        "whenHandedOver",
        "whenPrepared",
        "created",
        "assertedDate",
    }
)
_DAY_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(.*)$")


def _parse_day(text: str) -> tuple[date, str] | None:
    """'2026-05-01T10:00:00Z' → (date(2026,5,1), 'T10:00:00Z'); partial dates → None (left as is)."""
    match = _DAY_RE.match(text)
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3))), match.group(4)
    except ValueError:
        return None


def _months_before(day: date, anchor: date) -> tuple[int, int]:
    """Decompose day ≤ anchor as: anchor = add_months(day, M) + r days, M as large as possible."""
    months = (anchor.year - day.year) * 12 + (anchor.month - day.month)
    while months > 0 and add_months(day, months) > anchor:
        months -= 1
    return months, (anchor - add_months(day, months)).days


def shift_calendar(day: date, anchor: date, shift_to: date) -> date:
    """Move *day* so its distance to *shift_to* in calendar months + days is its distance to *anchor*.

    When month ends make that impossible, the side of the month boundaries is kept: a date exactly M
    months before the anchor stays "not more than M months" before shift_to, a date more than M
    months before stays more than M months before, and every date stays less than M+1 months before.
    """
    if day > anchor:  # future dates (period ends, planned occurrences): a plain day shift is enough
        return day + (shift_to - anchor)
    months, rest = _months_before(day, anchor)
    target = shift_to - timedelta(days=rest)
    candidate = add_months(target, -months)
    one_day = timedelta(days=1)
    if add_months(candidate, months) != target:
        if rest == 0:  # "exactly M months": smallest day whose +M months is not before shift_to
            while add_months(candidate, months) < target:
                candidate += one_day
        else:  # "more than M months": keep it more
            while add_months(candidate, months) > target:
                candidate -= one_day
    # M was the largest whole number of months: keep "less than M+1 months" too.
    while add_months(candidate, months + 1) <= shift_to:
        candidate += one_day
    return candidate


def _new_day(day: date, anchor: date, shift_to: date, mode: str) -> date:
    if mode == "calendar":
        return shift_calendar(day, anchor, shift_to)
    return day + (shift_to - anchor)


def _walk_dates(node: Any, visit: Any, key: str | None = None) -> Any:
    """Rebuild *node* with every date-typed string passed through visit(key, text)."""
    if isinstance(node, dict):
        return {k: _walk_dates(v, visit, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_dates(v, visit, key) for v in node]
    if isinstance(node, str) and key in DATE_KEYS:
        return visit(key, node)
    return node


def _collect_days(node: Any, skip_key: str = "birthDate") -> list[date]:
    days: list[date] = []

    def visit(key: str, text: str) -> str:
        parsed = _parse_day(text)
        if parsed and key != skip_key:
            days.append(parsed[0])
        return text

    _walk_dates(node, visit)
    return days


def _nudge_birth(born: date, shifted: date, pairs: Sequence[tuple[date, date]]) -> date:
    """Pick the shifted birth date (±2 days) that keeps every age in completed years unchanged."""
    for delta in (0, -1, 1, -2, 2):
        candidate = shifted + timedelta(days=delta)
        if all(completed_years(born, d) == completed_years(candidate, d2) for d, d2 in pairs if d >= born):
            return candidate
    return shifted


def shift_dates(data: Any, anchor: date, shift_to: date | None, mode: str = "days") -> Any:
    """Return a deep copy of *data* (a resource, Bundle or list) with every FHIR date shifted.

    Time of day and time zone are kept; partial dates ("2019", "2019-04") are left unchanged.
    """
    if mode not in ("days", "calendar"):
        raise ValueError(f"date shift mode must be 'days' or 'calendar', got {mode!r}")
    if shift_to is None or shift_to == anchor:
        return copy.deepcopy(data)
    pairs = [(anchor, shift_to)] + [(d, _new_day(d, anchor, shift_to, mode)) for d in _collect_days(data)]

    def visit(key: str, text: str) -> str:
        parsed = _parse_day(text)
        if not parsed:
            if key == "birthDate" and re.fullmatch(r"\d{4}", text):
                return str(int(text) + shift_to.year - anchor.year)
            return text
        day, rest = parsed
        new = _new_day(day, anchor, shift_to, mode)
        if key == "birthDate":
            new = _nudge_birth(day, new, pairs)
        return new.isoformat() + rest

    return _walk_dates(data, visit)


# --------------------------------------------------------------------------------------------
# Manifest and fixtures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixtureOrder:
    """A draft order of the fixture with the card topics expected for it on the order hooks."""

    resource: dict[str, Any]
    expect: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"{self.resource['resourceType']}/{self.resource['id']}"


@dataclass(frozen=True)
class FixtureSpec:
    """One patient of fixtures/manifest.yaml."""

    slug: str
    description: str
    path: Path
    anchor: date
    date_shift: str
    orders: tuple[FixtureOrder, ...]
    selected: tuple[str, ...]  # order references "ServiceRequest/<id>" selected on order-select
    expected_patient_view: tuple[str, ...]
    branches: tuple[str, ...] = ()

    def expected(self, hook: str, selections: Iterable[str] | None = None) -> list[str]:
        """Expected card topics (sorted) for a hook; order hooks add up the expectation of each order."""
        if hook == "patient-view":
            return sorted(self.expected_patient_view)
        if hook == "order-select":
            chosen = set(self.selected if selections is None else selections)
            return sorted(t for o in self.orders if o.reference in chosen for t in o.expect)
        if hook == "order-sign":
            return sorted(t for o in self.orders for t in o.expect)
        raise ValueError(f"unknown hook {hook!r}")

    def load(self, shift_to: date | None = None) -> LoadedFixture:
        bundle = load_fixture(self.path, shift_to, anchor=self.anchor, mode=self.date_shift)
        orders = [shift_dates(o.resource, self.anchor, shift_to, self.date_shift) for o in self.orders]
        return LoadedFixture(spec=self, bundle=bundle, orders=orders)


@dataclass
class LoadedFixture:
    """A fixture shifted to an evaluation day, ready to build requests from."""

    spec: FixtureSpec
    bundle: dict[str, Any]
    orders: list[dict[str, Any]]
    resources: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.resources = [e["resource"] for e in self.bundle.get("entry", []) if "resource" in e]

    @property
    def patient(self) -> dict[str, Any]:
        return next(r for r in self.resources if r["resourceType"] == "Patient")

    @property
    def patient_id(self) -> str:
        return str(self.patient["id"])


@dataclass(frozen=True)
class Manifest:
    anchor: date
    fixtures: tuple[FixtureSpec, ...]

    def get(self, slug: str) -> FixtureSpec:
        for spec in self.fixtures:
            if spec.slug == slug:
                return spec
        raise KeyError(f"no fixture {slug!r} in the manifest")


class ManifestError(ValueError):
    """fixtures/manifest.yaml is malformed; the message names the patient and the field."""


def _as_date(value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise ManifestError(f"{where}: expected a date YYYY-MM-DD, got {value!r}") from exc


def load_manifest(fixtures_dir: Path | str = FIXTURES_DIR) -> Manifest:
    """Read fixtures/manifest.yaml (patients, their orders and the expected cards)."""
    fixtures_dir = Path(fixtures_dir)
    if not (fixtures_dir / "manifest.yaml").is_file():
        # an installed wheel carries no fixtures: they live in the source checkout's fixtures/
        raise ManifestError(
            f"no fixture manifest at {fixtures_dir / 'manifest.yaml'}: pass the fixtures directory of a source "
            "checkout (e.g. `cds-service validate path/to/repo/fixtures`)"
        )
    data = yaml.safe_load((fixtures_dir / "manifest.yaml").read_text(encoding="utf-8"))
    anchor = _as_date(data.get("anchor", DEFAULT_ANCHOR), "anchor")
    specs: list[FixtureSpec] = []
    for index, item in enumerate(data.get("patients") or []):
        slug = item.get("slug")
        where = f"patients[{index}] ({slug})"
        if not slug:
            raise ManifestError(f"{where}: slug is required")
        orders: list[FixtureOrder] = []
        for o_index, order in enumerate(item.get("orders") or []):
            resource = order.get("resource")
            if not isinstance(resource, dict) or not resource.get("id"):
                raise ManifestError(f"{where}.orders[{o_index}]: resource with an id is required")
            orders.append(FixtureOrder(resource=resource, expect=tuple(order.get("expect") or ())))
        refs = {o.reference for o in orders}
        selected = tuple(s if "/" in s else f"ServiceRequest/{s}" for s in (item.get("selected") or []))
        for sel in selected:
            if sel not in refs:
                raise ManifestError(f"{where}.selected: {sel} is not one of the patient's orders")
        if orders and not selected:
            raise ManifestError(f"{where}.selected: name the order(s) selected on order-select")
        expected = item.get("expected") or {}
        for hook, chosen in (("order-select", set(selected)), ("order-sign", refs)):
            derived = sorted(t for o in orders if o.reference in chosen for t in o.expect)
            if hook in expected and sorted(expected[hook] or []) != derived:
                raise ManifestError(
                    f"{where}.expected.{hook}: {expected[hook]} disagrees with the orders' expectations {derived}"
                )
        mode = item.get("date_shift", "days")
        if mode not in ("days", "calendar"):
            raise ManifestError(f"{where}.date_shift: expected days or calendar, got {mode!r}")
        specs.append(
            FixtureSpec(
                slug=slug,
                description=str(item.get("description", "")).strip(),
                path=fixtures_dir / "patients" / f"{slug}.json",
                anchor=anchor,
                date_shift=mode,
                orders=tuple(orders),
                selected=selected,
                expected_patient_view=tuple(expected.get("patient-view") or ()),
                branches=tuple(item.get("branches") or ()),
            )
        )
    return Manifest(anchor=anchor, fixtures=tuple(specs))


def load_fixture(
    path: Path | str,
    shift_to: date | None = None,
    *,
    anchor: date | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Load a fixture Bundle, its dates shifted from the anchor to *shift_to* (None: unchanged).

    anchor and mode default to the manifest beside the fixture (fixtures/manifest.yaml).
    """
    path = Path(path)
    bundle = json.loads(path.read_text(encoding="utf-8"))
    if anchor is None or mode is None:
        manifest_path = path.parent.parent / "manifest.yaml"
        slug = path.stem
        found_anchor, found_mode = DEFAULT_ANCHOR, "days"
        if manifest_path.exists():
            data = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
            found_anchor = _as_date(data.get("anchor", DEFAULT_ANCHOR), "anchor")
            for item in data.get("patients") or []:
                if item.get("slug") == slug:
                    found_mode = item.get("date_shift", "days")
        anchor = anchor or found_anchor
        mode = mode or found_mode
    return shift_dates(bundle, anchor, shift_to, mode)


# --------------------------------------------------------------------------------------------
# In-memory prefetch
# --------------------------------------------------------------------------------------------


class UnsupportedQuery(ValueError):
    """A prefetch template uses a search feature prefetch_for does not implement."""


def _codeable_concepts(resource: Mapping[str, Any], param: str) -> list[Any]:
    """The CodeableConcepts a token search parameter looks at, per resource type."""
    kind = resource.get("resourceType")
    if param == "code":
        if kind == "MedicationRequest":
            return [resource.get("medicationCodeableConcept")]
        if kind == "FamilyMemberHistory":
            return [c.get("code") for c in resource.get("condition", [])]
        return [resource.get("code")]
    if param == "category":
        value = resource.get("category")
        return value if isinstance(value, list) else [value]
    if param == "clinical-status":
        return [resource.get("clinicalStatus")]
    if param == "verification-status":
        return [resource.get("verificationStatus")]
    raise UnsupportedQuery(f"token parameter {param!r}")


def _token_matches(concepts: Iterable[Any], tokens: Sequence[str]) -> bool:
    codings = [c for cc in concepts if isinstance(cc, dict) for c in cc.get("coding", []) if isinstance(c, dict)]
    for token in tokens:
        if "|" in token:
            system, code = token.split("|", 1)
            for coding in codings:
                if system and coding.get("system") != system:
                    continue
                if not system and coding.get("system"):
                    continue
                if code and coding.get("code") != code:
                    continue
                return True
        elif any(c.get("code") == token for c in codings):
            return True
    return False


def _subject_id(resource: Mapping[str, Any]) -> str | None:
    """The id of the Patient the resource is about (subject or patient reference), if any."""
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            kind, _, ident = ref["reference"].rpartition("/")
            return ident if kind.endswith("Patient") else None
    return None


_DATE_FIELDS = (
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "issued",
    "recordedDate",
    "onsetDateTime",
    "authoredOn",
    "authored",
    "performedDateTime",
    "performedPeriod",
    "started",
    "occurrenceDateTime",
    "occurrencePeriod",
    "date",
)


def _sort_date(resource: Mapping[str, Any], param: str) -> str:
    fields: Sequence[str] = ("authored", "authoredOn") if param == "authored" else _DATE_FIELDS
    for name in fields:
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start") or value.get("end")
        if isinstance(value, str):
            return value
    return ""


_DATE_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le)?(\d.*)$")


def _date_matches(resource: Mapping[str, Any], value: str) -> bool:
    """`date=<prefix><date>`, comparing the resource's date (its start, for a Period) with the value's
    first instant: enough for the bounded searches the service makes (`date=ge<day>`)."""
    match = _DATE_PREFIX.match(value)
    bound = parse_instant(match.group(2)) if match else None
    if bound is None:
        raise UnsupportedQuery(f"date value {value!r}")
    found = parse_instant(_sort_date(resource, "date"))
    if found is None:
        return False
    prefix = match.group(1) or "eq"
    return {
        "eq": found == bound, "ne": found != bound, "gt": found > bound,
        "lt": found < bound, "ge": found >= bound, "le": found <= bound,
    }[prefix]


def _matches(resource: Mapping[str, Any], params: Sequence[tuple[str, str]], patient_id: str | None) -> bool:
    for name, value in params:
        if name.startswith("_"):
            continue
        base, _, modifier = name.partition(":")
        if modifier:
            raise UnsupportedQuery(f"search modifier {name!r}")
        values = value.split(",")
        if base in ("patient", "subject"):
            wanted = {v.rsplit("/", 1)[-1] for v in values}
            if _subject_id(resource) not in wanted:
                return False
        elif base == "status":
            if resource.get("status") not in values:
                return False
        elif base == "questionnaire":
            canonical = str(resource.get("questionnaire", "")).split("|", 1)[0]
            if canonical not in {v.split("|", 1)[0] for v in values}:
                return False
        elif base == "date":
            if not all(_date_matches(resource, v) for v in values):
                return False
        elif base in ("code", "category", "clinical-status", "verification-status"):
            if not _token_matches(_codeable_concepts(resource, base), values):
                return False
        else:
            raise UnsupportedQuery(f"search parameter {name!r}")
    return True


def search(resources: Sequence[Mapping[str, Any]], query: str, base_url: str = EXAMPLE_FHIR_SERVER) -> dict[str, Any]:
    """Run one FHIR search ("Type?a=b&...") over *resources*; returns a searchset Bundle."""
    kind, _, query_string = query.partition("?")
    params = parse_qsl(query_string, keep_blank_values=True)
    for name, _ in params:
        if name.startswith("_") and name not in ("_sort", "_count"):
            raise UnsupportedQuery(f"search parameter {name!r}")
    found = [r for r in resources if r.get("resourceType") == kind and _matches(r, params, None)]
    for name, value in params:
        if name == "_sort":
            for key in reversed(value.split(",")):
                descending = key.startswith("-")
                field_name = key.lstrip("-")
                if field_name not in ("date", "authored", "_lastUpdated"):
                    raise UnsupportedQuery(f"_sort={value}")
                found.sort(key=lambda r, f=field_name: _sort_date(r, f), reverse=descending)
    total = len(found)
    for name, value in params:
        if name == "_count":
            found = found[: int(value)]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": f"{base_url}/{query}"}],
        "entry": [
            {
                "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
                "resource": copy.deepcopy(r),
                "search": {"mode": "match"},
            }
            for r in found
        ],
    }


def prefetch_for(
    resources: Sequence[Mapping[str, Any]], templates: Mapping[str, str], context: Mapping[str, Any]
) -> dict[str, Any]:
    """Execute prefetch templates against in-memory resources, as a FHIR server would.

    Instance reads give the resource (None when absent: "the EHR has no such data"); searches give
    searchset Bundles (empty Bundles when nothing matches). Templates whose context token has no
    value (e.g. no encounterId) are left out, as an EHR would.
    """
    result: dict[str, Any] = {}
    for key, template in templates.items():
        query = render_template(template, dict(context))
        if query is None:
            continue
        if "?" not in query:
            kind, _, ident = query.partition("/")
            match = next((r for r in resources if r.get("resourceType") == kind and r.get("id") == ident), None)
            result[key] = copy.deepcopy(match) if match is not None else None
            continue
        result[key] = search(resources, query)
    return result


# --------------------------------------------------------------------------------------------
# Building CDS Hooks requests
# --------------------------------------------------------------------------------------------


def draft_orders_bundle(orders: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": dict(o)} for o in orders]}


def hook_context(fixture: LoadedFixture, hook: str, selections: Sequence[str] | None = None) -> dict[str, Any]:
    """The hook context an EHR would send for this fixture."""
    context: dict[str, Any] = {"userId": EXAMPLE_USER, "patientId": fixture.patient_id}
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = draft_orders_bundle(fixture.orders)
    if hook == "order-select":
        context["selections"] = list(fixture.spec.selected if selections is None else selections)
    return context


def build_request(
    fixture: LoadedFixture,
    hook: str,
    templates: Mapping[str, str] | None,
    *,
    with_prefetch: bool = True,
    selections: Sequence[str] | None = None,
    fhir_server: str = EXAMPLE_FHIR_SERVER,
) -> dict[str, Any]:
    """A CDS Hooks request for *hook*: full prefetch from the fixture, or fhirServer + fhirAuthorization."""
    context = hook_context(fixture, hook, selections)
    chosen = ",".join(context.get("selections", []))
    hook_instance = uuid.uuid5(
        uuid.NAMESPACE_URL, f"lbp-cds-fixture:{fixture.spec.slug}:{hook}:{with_prefetch}:{chosen}"
    )
    request: dict[str, Any] = {"hook": hook, "hookInstance": str(hook_instance), "context": context}
    if with_prefetch:
        request["prefetch"] = prefetch_for(fixture.resources, templates or {}, context)
    else:
        request["fhirServer"] = fhir_server
        request["fhirAuthorization"] = {
            "access_token": PLACEHOLDER_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "lbp-cds-service",
            "patient": fixture.patient_id,
        }
    return request


def service_templates() -> dict[str, dict[str, str]]:
    """Discovery prefetch templates per hook, from the service registry."""
    from cds_service.clinical.knowledge import Knowledge
    from cds_service.registry import build_registry

    registry = build_registry(Knowledge.load(None))
    return {service.hook: dict(service.prefetch) for service in registry.values()}


# Which fixtures the committed example requests use: one per hook that shows a card.
EXAMPLE_REQUESTS = {
    "patient-view": "axspa-four-criteria",
    "order-select": "acute-nonspecific-mri-2wk",
    "order-sign": "red-flag-malignancy-history",
}


def write_example_requests(
    fixtures_dir: Path = FIXTURES_DIR, shift_to: date | None = None, out_dir: Path | None = None
) -> list[Path]:
    """Write fixtures/requests/<hook>-<slug>-{prefetch,no-prefetch}.json (deterministic output)."""
    manifest = load_manifest(fixtures_dir)
    templates = service_templates()
    out_dir = out_dir or fixtures_dir / "requests"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for hook, slug in EXAMPLE_REQUESTS.items():
        fixture = manifest.get(slug).load(shift_to)
        for with_prefetch, suffix in ((True, "prefetch"), (False, "no-prefetch")):
            request = build_request(fixture, hook, templates[hook], with_prefetch=with_prefetch)
            path = out_dir / f"{hook}-{slug}-{suffix}.json"
            path.write_text(json.dumps(request, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(path)
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fixtures_command", required=True)
    req = sub.add_parser("requests", help="regenerate the example CDS Hooks requests in fixtures/requests/")
    req.add_argument("--fixtures", type=Path, default=FIXTURES_DIR)
    req.add_argument("--out", type=Path, default=None, help="directory to write to (default: fixtures/requests)")
    req.add_argument(
        "--shift-to",
        default=None,
        help="YYYY-MM-DD or 'today' (default: keep the anchor dates, deterministic output)",
    )


def command(args: argparse.Namespace) -> int:
    """``cds-service fixtures requests``."""
    shift_to = None
    if args.shift_to == "today":
        from cds_service.settings import Settings

        shift_to = Settings.from_env().now().date()
    elif args.shift_to:
        shift_to = date.fromisoformat(args.shift_to)
    for path in write_example_requests(args.fixtures, shift_to, args.out):
        print(path)
    return 0
