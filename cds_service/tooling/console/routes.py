"""Console pages and their JSON endpoints (all under /console).

Pages are plain HTML from Jinja templates (autoescaped) plus static JS; every value that comes from
data is inserted by the JS as text. The JSON endpoints never change state: feedback goes to the
real CDS Hooks feedback endpoint, from the browser, exactly as an EHR sends it.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from flask import Response, current_app, render_template, request
from sqlalchemy.exc import SQLAlchemyError

from cds_service.analytics import Period, PeriodError, build_report
from cds_service.hooks_api import json_response
from cds_service.runtime import Runtime
from cds_service.tooling.fixtures import FIXTURES_DIR, UnsupportedQuery

from . import TRUSTED_TYPES_POLICY, bp
from .ehr import console_ehr, with_app_answers
from .markdown import render_markdown
from .preview import (
    HOOKS,
    ORDER_PRESETS,
    ORDER_REASONS,
    ConsoleInputError,
    build_request,
    bundle_listing,
    bundle_source,
    fixture_listing,
    fixture_source,
    read_manifest,
    services_by_hook,
)

#: app.config key: the fixtures directory the console offers (default: the project's fixtures/).
FIXTURES_DIR_KEY = "CDS_CONSOLE_FIXTURES_DIR"
MAX_MARKDOWN_TEXTS = 50


def _runtime() -> Runtime:
    return current_app.extensions["cds"]


def _today() -> date:
    """Today in the site's time zone: the day the engine evaluates on, so fixtures are shifted to it."""
    return _runtime().engine.now().date()


def _fixtures_dir() -> Path:
    return Path(current_app.config.get(FIXTURES_DIR_KEY) or FIXTURES_DIR)


def _error(message: str, status: int = 400, field: str | None = None, code: str = "invalid-input") -> Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if field:
        body["field"] = field
    return json_response(body, status)


def _json_body() -> tuple[dict[str, Any] | None, Response | None]:
    """The request's JSON object, or an error response (415 not JSON, 400 malformed)."""
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json":
        return None, _error("Content-Type must be application/json", 415, "Content-Type", "unsupported-media-type")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return None, _error("body must be a JSON object", 400, "$", "malformed-json")
    return body, None


def _services() -> dict[str, dict[str, Any]]:
    return services_by_hook([s.discovery() for s in _runtime().services.values()])


def _page(template: str, **context: Any) -> str:
    return render_template(template, trusted_types_policy=TRUSTED_TYPES_POLICY, **context)


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------


@bp.get("/")
def preview_page() -> str:
    return _page("preview.html", active="preview")


@bp.get("/analytics")
def analytics_page() -> str:
    return _page("analytics.html", active="analytics")


@bp.get("/review")
def review_page() -> str | Response:
    only_differences = request.args.get("show") == "differences"
    try:
        review = _review_data()
    except FileNotFoundError as exc:
        return _page("review.html", active="review", review=None, error=str(exc), only_differences=False)
    return _page("review.html", active="review", review=review, error=None, only_differences=only_differences)


# --------------------------------------------------------------------------------------------
# Preview API
# --------------------------------------------------------------------------------------------


@bp.get("/api/fixtures")
def api_fixtures() -> Response:
    """Fixture patients, order presets and the services per hook (for the preview's pickers)."""
    today = _today()
    manifest = read_manifest(_fixtures_dir())
    services = _services()
    return json_response(
        {
            "shiftedTo": today.isoformat(),
            "anchor": manifest.anchor.isoformat() if manifest else None,
            "fixtures": fixture_listing(manifest, today) if manifest else [],
            "hooks": [{"hook": h, "serviceId": services[h]["id"]} for h in HOOKS if h in services],
            "orderPresets": [{"key": k, "display": v["display"], "code": v["code"]} for k, v in ORDER_PRESETS.items()],
            "orderReasons": [
                {"key": k, "display": v["display"] if v else "No reason on the order"} for k, v in ORDER_REASONS.items()
            ],
        }
    )


@bp.post("/api/bundle")
def api_bundle() -> Response:
    """Check a pasted/uploaded Bundle and describe it (patient, resource counts, draft orders)."""
    body, error = _json_body()
    if error:
        return error
    assert body is not None
    try:
        source = bundle_source(body.get("bundle"))
    except ConsoleInputError as exc:
        return _error(exc.message, exc.status, exc.field)
    return json_response(bundle_listing(source, _today()))


@bp.post("/api/request")
def api_request() -> Response:
    """Build the CDS Hooks request (context + full prefetch) the browser then sends to the service."""
    body, error = _json_body()
    if error:
        return error
    assert body is not None
    today = _today()
    try:
        if "bundle" in body:
            source = bundle_source(body["bundle"])
        else:
            source = fixture_source(read_manifest(_fixtures_dir()), body.get("fixture"), today)
        source = with_app_answers(source)  # what the assessment app wrote from this console (ehr.py)
        built = build_request(source, body.get("hook"), _services(), body.get("orders"), today)
    except ConsoleInputError as exc:
        return _error(exc.message, exc.status, exc.field)
    except UnsupportedQuery as exc:
        return _error(f"a prefetch template cannot be run in memory: {exc}", 422, "prefetch", "unsupported-query")
    return json_response(
        {"serviceId": built.service_id, "request": built.request, "expected": built.expected, "source": source.label}
    )


@bp.post("/api/smart-launch")
def api_smart_launch() -> Response:
    """Follow a card's smart link as the EHR (ehr.py): register the launch, answer the URL to open."""
    body, error = _json_body()
    if error:
        return error
    assert body is not None
    try:
        if "bundle" in body:
            source = bundle_source(body["bundle"])
        else:
            source = fixture_source(read_manifest(_fixtures_dir()), body.get("fixture"), _today())
        return json_response({"url": console_ehr().launch(source, body.get("link"))})
    except ConsoleInputError as exc:
        return _error(exc.message, exc.status, exc.field)


@bp.post("/api/markdown")
def api_markdown() -> Response:
    """Sanitised HTML for card details (the page inserts only this, via its Trusted Types policy)."""
    body, error = _json_body()
    if error:
        return error
    assert body is not None
    texts = body.get("texts")
    if not isinstance(texts, list) or len(texts) > MAX_MARKDOWN_TEXTS or not all(isinstance(t, str) for t in texts):
        return _error(f"texts must be a list of at most {MAX_MARKDOWN_TEXTS} strings", 400, "texts")
    return json_response({"html": [render_markdown(t) for t in texts]})


# --------------------------------------------------------------------------------------------
# Analytics API
# --------------------------------------------------------------------------------------------


def _analytics_report():
    """(report, None), or (None, the JSON error answer) for a bad period or an unavailable database."""
    try:
        period = Period.parse(request.args.get("since"), request.args.get("until"), today=_today())
        service = request.args.get("service") or None
        rt = _runtime()
        displays = {topic: card.display for topic, card in rt.catalog.cards.items()}
        return build_report(rt.store.engine, period, service, displays), None
    except PeriodError as exc:
        return None, _error(str(exc), 400, "since/until")
    except SQLAlchemyError:
        return None, _error("the database is unavailable; retry later", 503, None, "store-unavailable")


@bp.get("/api/analytics")
def api_analytics() -> Response:
    """The figures of the analytics page (same as `cds-service report --json`)."""
    report, error = _analytics_report()
    if error is not None:
        return error
    body = report.as_json()
    body["services"] = [{"id": s.id, "hook": s.hook, "title": s.title} for s in _runtime().services.values()]
    return json_response(body)


@bp.get("/api/analytics.csv")
def api_analytics_csv() -> Response:
    report, error = _analytics_report()
    if error is not None:
        return error
    filename = f"card-feedback-{report.period.since}-{report.period.until}.csv"
    return Response(
        report.to_csv(), mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


# --------------------------------------------------------------------------------------------
# Rule review sheet
# --------------------------------------------------------------------------------------------


def _topic_diff(expected: list[str], actual: list[str]) -> dict[str, Any]:
    """Multiset difference (an order hook can return the same topic twice), plus each topic marked."""
    exp, act = Counter(expected), Counter(actual)

    def mark(items: list[str], other: Counter[str]) -> list[dict[str, Any]]:
        remaining = Counter(other)
        marked = []
        for topic in items:
            matched = remaining[topic] > 0
            remaining[topic] -= 1 if matched else 0
            marked.append({"topic": topic, "matched": matched})
        return marked

    return {
        "matched": sorted((exp & act).elements()),
        "missing": sorted((exp - act).elements()),
        "unexpected": sorted((act - exp).elements()),
        "expectedMarked": mark(expected, act),
        "actualMarked": mark(actual, exp),
    }


def _review_data() -> dict[str, Any]:
    from cds_service.tooling.validation_report import run

    fixtures_dir = _fixtures_dir()
    if not (fixtures_dir / "manifest.yaml").exists():
        raise FileNotFoundError(f"no fixture manifest in {fixtures_dir}")
    # The live engine, with nothing recorded: a review run is not clinical use and must not reach
    # the served-card analytics. No second app, no temporary database.
    report = run(fixtures_dir, _runtime().engine, _today())
    rows = []
    for r in report.results:
        verdict = "ok" if r.ok else ("mismatch" if r.status == 200 and not r.problems else "error")
        rows.append(
            {
                "slug": r.slug,
                "hook": r.hook,
                "scope": r.scope,
                "expected": r.expected,
                "actual": r.actual,
                "status": r.status,
                "problems": r.problems,
                "ok": r.ok,
                "verdict": verdict,
                "diff": _topic_diff(r.expected, r.actual),
            }
        )
    failed = sum(1 for row in rows if not row["ok"])
    return {
        "evaluatedOn": report.evaluated_on.isoformat(),
        "anchor": report.anchor.isoformat(),
        "fixtures": len({row["slug"] for row in rows}),
        "checks": len(rows),
        "passed": len(rows) - failed,
        "failed": failed,
        "descriptions": report.descriptions,
        "results": rows,
    }


@bp.get("/api/review")
def api_review() -> Response:
    """The validation report as JSON: every fixture × hook, expected vs actual topics and the difference."""
    try:
        return json_response(_review_data())
    except FileNotFoundError as exc:
        return _error(str(exc), 404, None, "no-fixtures")
