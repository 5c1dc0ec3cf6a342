"""Validation report: every fixture patient through every hook, expected vs actual cards.

Runs the service exactly as an EHR calls it — discovery first (to learn each service's prefetch
templates), then ``POST /cds-services/{id}`` with a full prefetch built in memory from the fixture
(`cds_service.fixtures.prefetch_for`) and, beside it, a ``fhirServer`` + token answered in process
from the same fixture (`cds_service.fixture_fhir`: what the service fetches itself, e.g. the rest of
a fever window a "latest 50" prefetch cut off) — and compares the card topics returned with the topics the
fixture manifest expects (written from the clinical specification, independently of the engine).
On the order hooks each draft order is also checked on its own (order-select with that order as
the only selection), so a wrong card is pinned to the order that produced it.

Every 200 response is also checked against the CDS Hooks response schema and card rules
(`cds_service.protocol.response_errors`). Any mismatch or invalid response fails the run.

    cds-service validate fixtures/ [--markdown docs/validation-report.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from cds_service.fixture_fhir import FIXTURE_FHIR_BASE, serving
from cds_service.fixtures import FIXTURES_DIR, FixtureSpec, LoadedFixture, build_request, load_manifest

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


def _client(app_or_client: Flask | FlaskClient) -> FlaskClient:
    return app_or_client.test_client() if isinstance(app_or_client, Flask) else app_or_client


def _discovery(client: FlaskClient) -> dict[str, dict[str, Any]]:
    """hook → discovery entry (id, prefetch templates)."""
    response = client.get("/cds-services")
    if response.status_code != 200:
        raise RuntimeError(f"discovery failed: HTTP {response.status_code}")
    return {service["hook"]: service for service in response.get_json()["services"]}


def _topics(body: Any) -> list[str]:
    cards = body.get("cards", []) if isinstance(body, dict) else []
    return sorted(str(card.get("source", {}).get("topic", {}).get("code", "?")) for card in cards)


def _call(
    client: FlaskClient,
    service: dict[str, Any],
    fixture: LoadedFixture,
    hook: str,
    scope: str,
    expected: list[str],
    selections: list[str] | None = None,
) -> CallResult:
    from cds_service.protocol import response_errors

    request = build_request(fixture, hook, service.get("prefetch", {}), selections=selections)
    # as an EHR sends it: the FHIR server and its token beside the prefetch (cds_service.fixture_fhir)
    server = build_request(fixture, hook, None, with_prefetch=False, selections=selections,
                           fhir_server=FIXTURE_FHIR_BASE)
    request.update(fhirServer=server["fhirServer"], fhirAuthorization=server["fhirAuthorization"])
    response = client.post(f"/cds-services/{service['id']}", json=request)
    body = response.get_json(silent=True)
    problems: list[str] = []
    if response.status_code == 200:
        problems = response_errors(body)
    elif isinstance(body, dict):
        problems = [f"{body.get('error')}: {body.get('message')}"]
    return CallResult(fixture.spec.slug, hook, scope, sorted(expected), _topics(body), response.status_code, problems)


def run_fixture(
    client: FlaskClient, services: dict[str, dict[str, Any]], spec: FixtureSpec, shift_to: date
) -> list[CallResult]:
    """Every hook for one fixture (order hooks only when it has draft orders), plus each order alone."""
    fixture = spec.load(shift_to)
    with serving(client.application.extensions["cds"].fhir.session, fixture.resources):
        return _run_hooks(client, services, spec, fixture)


def _run_hooks(
    client: FlaskClient, services: dict[str, dict[str, Any]], spec: FixtureSpec, fixture: LoadedFixture
) -> list[CallResult]:
    results = [_call(client, services["patient-view"], fixture, "patient-view", "hook", spec.expected("patient-view"))]
    if not spec.orders:
        return results
    results.append(
        _call(client, services["order-select"], fixture, "order-select", "hook", spec.expected("order-select"))
    )
    for order in spec.orders:
        results.append(
            _call(
                client,
                services["order-select"],
                fixture,
                "order-select",
                order.reference,
                sorted(order.expect),
                selections=[order.reference],
            )
        )
    results.append(_call(client, services["order-sign"], fixture, "order-sign", "hook", spec.expected("order-sign")))
    return results


def run(fixtures_dir: Path | str, app_or_client: Flask | FlaskClient, now: datetime | date | None = None) -> Report:
    """Run every fixture of *fixtures_dir* through the app and compare with the manifest.

    *now* is the evaluation day the fixtures are shifted to. The service reads its own clock, so
    it must be today's date (UTC) — the default.
    """
    if now is None:
        now = datetime.now(UTC)
    day = now.date() if isinstance(now, datetime) else now
    manifest = load_manifest(fixtures_dir)
    client = _client(app_or_client)
    services = _discovery(client)
    results: list[CallResult] = []
    for spec in manifest.fixtures:
        results.extend(run_fixture(client, services, spec, day))
    return Report(
        evaluated_on=day,
        anchor=manifest.anchor,
        results=results,
        descriptions={s.slug: s.description for s in manifest.fixtures},
    )


def _default_app(data_dir: Path) -> Flask:
    """An app for a validation run: development settings, a throw-away database, no client auth."""
    from cds_service.app import create_app
    from cds_service.settings import Settings

    settings = Settings.from_env().with_overrides(
        environment="development",
        auth_mode="off",
        data_dir=data_dir,
        database_url=None,
        console_enabled=False,
        log_level="WARNING",
    )
    return create_app(settings)


def _run_selected(fixtures_dir: Path, app: Flask, only: Sequence[str]) -> Report:
    if not only:
        return run(fixtures_dir, app)
    manifest = load_manifest(fixtures_dir)
    client = app.test_client()
    services = _discovery(client)
    day = datetime.now(UTC).date()
    results = [r for slug in only for r in run_fixture(client, services, manifest.get(slug), day)]
    return Report(day, manifest.anchor, results, {s.slug: s.description for s in manifest.fixtures})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cds-service validate",
        description="Run every fixture patient through every hook and compare the cards with the manifest.",
    )
    parser.add_argument(
        "fixtures",
        nargs="?",
        type=Path,
        default=FIXTURES_DIR,
        help="fixtures directory (with manifest.yaml and patients/)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown to this file")
    parser.add_argument("--only", action="append", default=[], help="run only these fixture slugs")
    args = parser.parse_args(list(argv) if argv is not None else None)
    with tempfile.TemporaryDirectory(prefix="cds-validate-") as data_dir:
        app = _default_app(Path(data_dir))
        try:
            report = _run_selected(args.fixtures, app, args.only)
        finally:
            app.extensions["cds"].fhir.close()
    print(report.to_table())
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.to_markdown(), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
