"""Validation report: every fixture patient through every hook, expected vs actual cards.

Runs the hook engine exactly as an EHR's call reaches it — discovery first (to learn each service's
prefetch templates), then each hook request with a full prefetch built in memory from the fixture
(`cds_service.tooling.fixtures.prefetch_for`) and, beside it, a ``fhirServer`` + token answered in
process from the same fixture (`cds_service.tooling.fixture_fhir`: what the service fetches itself,
e.g. the rest of a fever window a "latest 50" prefetch cut off) — and compares the card topics
returned with the topics the fixture manifest expects (written from the clinical specification,
independently of the engine).
On the order hooks each draft order is also checked on its own (order-select with that order as
the only selection), so a wrong card is pinned to the order that produced it.

Every 200 response is also checked against the CDS Hooks response schema and card rules
(`cds_service.protocol.response_errors`). Any mismatch or invalid response fails the run.

    cds-service validate fixtures/ [--markdown docs/validation-report.md]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from cds_service.engine import HookEngine, topics
from cds_service.protocol import RequestError, response_errors
from cds_service.runtime import Runtime
from cds_service.settings import Settings
from cds_service.tooling.fixture_fhir import FIXTURE_FHIR_BASE, serving
from cds_service.tooling.fixtures import FIXTURES_DIR, FixtureSpec, LoadedFixture, build_request, load_manifest

HOOK_ORDER = ("patient-view", "order-select", "order-sign")


@dataclass
class CallResult:
    """One hook call (scope "hook") or one order checked alone (scope "ServiceRequest/<id>")."""

    slug: str
    hook: str
    scope: str
    expected: list[str]
    actual: list[str]
    status: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.expected == self.actual and not self.problems


@dataclass
class Report:
    evaluated_on: date
    anchor: date
    results: list[CallResult]
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CallResult]:
        return [r for r in self.results if not r.ok]

    def summary_line(self) -> str:
        passed = sum(1 for r in self.results if r.ok)
        failed = len(self.results) - passed
        return f"{passed} passed, {failed} failed"

    # ---- output -------------------------------------------------------------------------------

    def _rows(self) -> list[tuple[str, str, str, str, str, str]]:
        rows = []
        for r in self.results:
            verdict = "ok" if r.ok else "MISMATCH" if r.status == 200 and not r.problems else "ERROR"
            detail = "; ".join(r.problems) if r.problems else ("" if r.status == 200 else f"HTTP {r.status}")
            rows.append(
                (
                    r.slug,
                    r.hook,
                    r.scope,
                    ", ".join(r.expected) or "—",
                    ", ".join(r.actual) or "—",
                    verdict + (f" ({detail})" if detail else ""),
                )
            )
        return rows

    def to_table(self) -> str:
        """A plain-text table for the terminal."""
        header = ("fixture", "hook", "scope", "expected", "actual", "result")
        rows = [header, *self._rows()]
        widths = [min(max(len(row[i]) for row in rows), 60) for i in range(len(header))]

        def line(row: Sequence[str]) -> str:
            return "  ".join(cell[:60].ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

        out = [line(header), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in rows[1:]]
        out.append("")
        out.append(f"evaluated on {self.evaluated_on} (fixture anchor {self.anchor}): {self.summary_line()}")
        return "\n".join(out)

    def to_markdown(self) -> str:
        """The report as Markdown (docs/validation-report.md)."""
        fixtures = sorted({r.slug for r in self.results})
        lines = [
            "# Validation report",
            "",
            "Every synthetic fixture patient (`fixtures/patients/`) sent through every hook the way an EHR "
            "calls the service (discovery, then `POST /cds-services/{id}` with a full prefetch built "
            "from the fixture and a FHIR server answering from it in process), comparing the card topics "
            "returned with the topics "
            "`fixtures/manifest.yaml` expects. "
            "The expectations were written from the clinical specification, not from the engine's output. "
            "Order hooks are also checked per draft order (order-select with that order alone selected).",
            "",
            f"- Evaluated on: {self.evaluated_on} (fixture dates shifted from the anchor {self.anchor})",
            f"- Fixtures: {len(fixtures)}; checks: {len(self.results)}; result: **{self.summary_line()}**",
            "- Regenerate: `cds-service validate fixtures/ --markdown docs/validation-report.md`",
            "",
        ]
        if self.failures:
            lines += [
                "## Mismatches",
                "",
                "| fixture | hook | scope | expected | actual | result |",
                "|---|---|---|---|---|---|",
            ]
            for row in self._rows():
                if not row[5].startswith("ok"):
                    lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            lines.append("")
        lines += [
            "## All checks",
            "",
            "| fixture | hook | scope | expected | actual | result |",
            "|---|---|---|---|---|---|",
        ]
        for row in self._rows():
            lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        lines += ["", "## Fixtures", "", "| fixture | description |", "|---|---|"]
        for slug in fixtures:
            lines.append(f"| `{slug}` | {_md_cell(self.descriptions.get(slug, ''))} |")
        return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _call(
    engine: HookEngine,
    service: dict[str, Any],
    fixture: LoadedFixture,
    hook: str,
    scope: str,
    expected: list[str],
    day: date,
    selections: list[str] | None = None,
) -> CallResult:
    request = ehr_request(fixture, hook, service, selections)
    try:
        outcome = engine.invoke(service["id"], request, now=day, record=False)
    except RequestError as exc:
        return CallResult(
            fixture.spec.slug, hook, scope, sorted(expected), [], exc.status, [f"{exc.error}: {exc.message}"]
        )
    problems: list[str] = []
    if outcome.status == 200:
        problems = response_errors(outcome.body)
    else:
        problems = [f"{outcome.body.get('error')}: {outcome.body.get('message')}"]
    return CallResult(fixture.spec.slug, hook, scope, sorted(expected), topics(outcome.body), outcome.status, problems)


def ehr_request(
    fixture: LoadedFixture, hook: str, service: dict[str, Any], selections: list[str] | None = None
) -> dict[str, Any]:
    """The request as an EHR sends it: the full prefetch, and beside it the FHIR server and its token
    (answered by tooling.fixture_fhir inside `serving`)."""
    request = build_request(fixture, hook, service.get("prefetch", {}), selections=selections)
    server = build_request(fixture, hook, None, with_prefetch=False, selections=selections,
                           fhir_server=FIXTURE_FHIR_BASE)
    request.update(fhirServer=server["fhirServer"], fhirAuthorization=server["fhirAuthorization"])
    return request


def services_by_hook(engine: HookEngine) -> dict[str, dict[str, Any]]:
    """hook → discovery entry (id, prefetch templates), as an EHR learns them."""
    return {service["hook"]: service for service in engine.discovery()["services"]}


def run_fixture(engine: HookEngine, spec: FixtureSpec, day: date) -> list[CallResult]:
    """Every hook for one fixture (order hooks only when it has draft orders), plus each order alone."""
    services = services_by_hook(engine)
    fixture = spec.load(day)
    with serving(engine.runtime.fhir.session, fixture.resources):
        return _run_hooks(engine, services, spec, fixture, day)


def _run_hooks(
    engine: HookEngine, services: dict[str, dict[str, Any]], spec: FixtureSpec, fixture: LoadedFixture, day: date
) -> list[CallResult]:

    def call(hook: str, scope: str, expected: list[str], selections: list[str] | None = None) -> CallResult:
        return _call(engine, services[hook], fixture, hook, scope, expected, day, selections)

    results = [call("patient-view", "hook", spec.expected("patient-view"))]
    if not spec.orders:
        return results
    results.append(call("order-select", "hook", spec.expected("order-select")))
    for order in spec.orders:
        results.append(call("order-select", order.reference, sorted(order.expect), selections=[order.reference]))
    results.append(call("order-sign", "hook", spec.expected("order-sign")))
    return results


def run(fixtures_dir: Path | str, engine: HookEngine, day: date | None = None, only: Sequence[str] = ()) -> Report:
    """Run the fixtures of *fixtures_dir* (all, or the slugs in *only*) through the engine.

    *day* is the evaluation day in the site's time zone (default: today there); the fixtures are
    shifted to it and the engine evaluates on it, so any day can be checked. Nothing is recorded.
    """
    day = day or engine.now().date()
    manifest = load_manifest(fixtures_dir)
    specs = [manifest.get(slug) for slug in only] if only else manifest.fixtures
    results = [r for spec in specs for r in run_fixture(engine, spec, day)]
    return Report(
        evaluated_on=day,
        anchor=manifest.anchor,
        results=results,
        descriptions={s.slug: s.description for s in manifest.fixtures},
    )


def evaluation_runtime(settings: Settings | None = None) -> Runtime:
    """A runtime for tooling: the site's knowledge and cards, no database, no client authentication."""
    settings = (settings or Settings.from_env()).with_overrides(auth_mode="off", console_enabled=False)
    return Runtime.build(settings, with_store=False)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "fixtures",
        nargs="?",
        type=Path,
        default=FIXTURES_DIR,
        help="fixtures directory (with manifest.yaml and patients/)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown to this file")
    parser.add_argument("--only", action="append", default=[], help="run only these fixture slugs")
    parser.add_argument(
        "--on", type=date.fromisoformat, metavar="YYYY-MM-DD", help="evaluation day (default: today in CDS_TIMEZONE)"
    )


def command(args: argparse.Namespace) -> int:
    """``cds-service validate``: exit 0 when every fixture gives exactly its expected cards."""
    from cds_service.tooling.fixtures import ManifestError

    runtime = evaluation_runtime()
    try:
        report = run(args.fixtures, runtime.engine, args.on, args.only)
    except (ManifestError, KeyError) as exc:
        print(f"cds-service validate: {exc}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    print(report.to_table())
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.to_markdown(), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0 if report.ok else 1
