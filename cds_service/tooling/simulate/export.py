"""FHIR Bulk Data exports (NDJSON, one file per resource type, as ``$export`` writes them): reading one
into per-patient groups, and writing one from the fixtures or as a generated population.

Reading: every ``*.ndjson`` / ``*.ndjson.gz`` file of the folder is read line by line, whatever its name
(``Patient.ndjson``, ``Patient.000.ndjson``, ``1.Patient.ndjson``…): the type comes from each line's
``resourceType``. Resources are grouped by the Patient they are about (``subject`` or ``patient``
reference); others are counted and ignored. The groups are held in memory (about the size of the
export); exports larger than memory should be split by patient first.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

from cds_service.tooling.fixtures import FIXTURES_DIR, load_manifest


class ExportError(ValueError):
    """The folder is not a readable NDJSON export; the message names the file and line."""


@dataclass
class Population:
    """Resources of an export grouped per patient (``patients`` keeps the export's order)."""

    patients: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unlinked: Counter = field(default_factory=Counter)  # resource type → resources about no known patient
    files: int = 0


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The id of the Patient a resource is about (the Patient's own id for a Patient)."""
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id")) if resource.get("id") else None
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            kind, _, ident = ref["reference"].rpartition("/")
            return ident if kind.endswith("Patient") and ident else None
    return None


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _lines(directory: Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    files = sorted([*directory.glob("*.ndjson"), *directory.glob("*.ndjson.gz")])
    if not files:
        raise ExportError(f"{directory}: no *.ndjson files (a FHIR Bulk Data export folder was expected)")
    for path in files:
        with _open(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    resource = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ExportError(f"{path.name} line {number}: not JSON ({exc.msg})") from exc
                if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                    raise ExportError(f"{path.name} line {number}: not a FHIR resource (no resourceType)")
                yield path, number, resource


def read_export(directory: Path | str) -> Population:
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: not a folder")
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    has_patient: set[str] = set()
    files: set[Path] = set()
    unlinked: Counter = Counter()
    for path, _number, resource in _lines(directory):
        files.add(path)
        owner = patient_of(resource)
        if owner is None:
            unlinked[resource["resourceType"]] += 1
            continue
        if resource["resourceType"] == "Patient":
            has_patient.add(owner)
        grouped[owner].append(resource)
    population = Population(files=len(files), unlinked=unlinked)
    for owner, resources in grouped.items():
        if owner in has_patient:
            population.patients[owner] = resources
        else:  # resources about a patient the export does not contain
            for resource in resources:
                unlinked[resource["resourceType"]] += 1
    return population


def write_export(directory: Path | str, resources: Iterator[dict[str, Any]]) -> dict[str, int]:
    """Write resources as ``<Type>.ndjson`` files; returns the count per type."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handles: dict[str, IO[str]] = {}
    counts: Counter = Counter()
    try:
        for resource in resources:
            kind = resource["resourceType"]
            if kind not in handles:
                handles[kind] = (directory / f"{kind}.ndjson").open("w", encoding="utf-8")
            handles[kind].write(json.dumps(resource, separators=(",", ":")) + "\n")
            counts[kind] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return dict(counts)


def fixture_resources(day: date, fixtures_dir: Path | str = FIXTURES_DIR) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(slug, resources) per fixture patient, shifted to *day*: its bundle plus its orders as ServiceRequests."""
    for spec in load_manifest(fixtures_dir).fixtures:
        loaded = spec.load(day)
        yield spec.slug, [*copy.deepcopy(loaded.resources), *copy.deepcopy(loaded.orders)]


def export_fixtures(directory: Path | str, day: date, fixtures_dir: Path | str = FIXTURES_DIR) -> dict[str, int]:
    """The fixtures as a Bulk Data export (for tests and demonstrations of ``cds-service simulate``)."""
    return write_export(directory, (r for _, resources in fixture_resources(day, fixtures_dir) for r in resources))


def _renamed(resources: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Copies with every resource id, and every reference to one, prefixed (a new synthetic patient)."""
    ids = {f"{r['resourceType']}/{r['id']}" for r in resources if r.get("id")}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "reference" and isinstance(value, str) and value in ids:
                    kind, _, ident = value.partition("/")
                    out[key] = f"{kind}/{prefix}{ident}"
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    renamed = []
    for resource in resources:
        copy_ = walk(resource)
        if copy_.get("id"):
            copy_["id"] = f"{prefix}{copy_['id']}"
        renamed.append(copy_)
    return renamed


def generate_population(directory: Path | str, size: int, day: date, *, seed: int = 17,
                        fixtures_dir: Path | str = FIXTURES_DIR) -> Counter:
    """A synthetic population of *size* patients: each a fixture patient (drawn at random, seeded) under
    new ids. Returns how many copies of each fixture were drawn, from which the expected figures follow."""
    templates = list(fixture_resources(day, fixtures_dir))
    rng = random.Random(seed)
    drawn: Counter = Counter()

    def resources() -> Iterator[dict[str, Any]]:
        for index in range(size):
            slug, template = templates[rng.randrange(len(templates))]
            drawn[slug] += 1
            yield from _renamed(template, f"g{index:06d}-")

    write_export(directory, resources())
    return drawn
