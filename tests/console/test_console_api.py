"""Console pages and JSON endpoints, Flask-level: security headers, on/off switch, request building,
pasted Bundles, Markdown sanitising and the rule review sheet."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from cds_service.settings import Settings
from cds_service.store import feedback, served_cards
from cds_service.tooling.console import CONSOLE_CSP
from cds_service.tooling.console.markdown import ALLOWED_TAGS, render_markdown
from cds_service.tooling.fixtures import load_manifest

from .conftest import CONSOLE_DATA

CONSOLE_PACKAGE = Path(__file__).resolve().parents[2] / "cds_service" / "console"
HOSTILE_BUNDLE = json.loads((CONSOLE_DATA / "hostile-bundle.json").read_text(encoding="utf-8"))


@pytest.fixture
def console_app(make_app):
    app = make_app()
    app.config["CDS_CONSOLE_FIXTURES_DIR"] = str(CONSOLE_DATA)
    return app


@pytest.fixture
def console(console_app):
    return console_app.test_client()


def row_count(app, table: sa.Table) -> int:
    app.extensions["cds"].engine.served_writer.flush()  # served-card rows are written off the request path
    with app.extensions["cds"].store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# --------------------------------------------------------------------------------------------
# Pages, headers, switch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/console/", "/console/analytics", "/console/review"])
def test_pages_have_strict_csp_and_no_inline_script(console, path: str) -> None:
    response = console.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == CONSOLE_CSP
    assert "'unsafe-inline'" not in CONSOLE_CSP and "'unsafe-eval'" not in CONSOLE_CSP
    assert "require-trusted-types-for 'script'" in CONSOLE_CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script> found"
    assert not re.search(r"<[a-zA-Z][^>]*\son[a-z]+\s*=", html), "inline event handler found"
    assert " style=" not in html


def test_json_endpoints_keep_the_console_csp(console) -> None:
    response = console.get("/console/api/fixtures")
    assert response.headers["Content-Security-Policy"] == CONSOLE_CSP
    assert response.headers["Cache-Control"] == "no-store"


def test_no_third_party_resources_anywhere() -> None:
    """Works offline: nothing in the console's templates, CSS or JS loads from another host."""
    for path in [*CONSOLE_PACKAGE.glob("templates/*.html"), *CONSOLE_PACKAGE.glob("static/*")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert not re.search(r"""url\(\s*["']?(https?:)?//""", text), path
        assert not re.search(r"""import\s[^;]*from\s+["'](https?:)?//""", text), path
        assert "innerHTML" not in text or path.name == "common.js", f"{path}: only common.js may set HTML"


def test_static_files_are_served(console) -> None:
    for name in ("console.css", "common.js", "preview.js", "analytics.js"):
        response = console.get(f"/console/static/{name}")
        assert response.status_code == 200, name
        response.close()


def test_console_off_in_production_unless_enabled(make_app) -> None:
    assert Settings.from_env({"CDS_ENV": "production"}).effective_console_enabled is False
    assert Settings.from_env({"CDS_ENV": "development"}).effective_console_enabled is True
    assert Settings.from_env({"CDS_ENV": "production", "CDS_CONSOLE": "true"}).effective_console_enabled is True
    production = make_app(environment="production")
    for path in ("/console/", "/console/api/fixtures", "/console/api/analytics", "/console/static/preview.js"):
        assert production.test_client().get(path).status_code == 404, path
    enabled = make_app(environment="production", console_enabled=True)
    assert enabled.test_client().get("/console/").status_code == 200


# --------------------------------------------------------------------------------------------
# Fixtures and request building
# --------------------------------------------------------------------------------------------


def test_fixture_listing(console) -> None:
    body = console.get("/console/api/fixtures").get_json()
    manifest = load_manifest(CONSOLE_DATA)
    assert [f["slug"] for f in body["fixtures"]] == [s.slug for s in manifest.fixtures]
    assert {h["hook"]: h["serviceId"] for h in body["hooks"]} == {
        "patient-view": "lbp-patient-view",
        "order-select": "lbp-imaging-order-select",
        "order-sign": "lbp-imaging-order-sign",
    }
    nonspecific = next(f for f in body["fixtures"] if f["slug"] == "console-nonspecific")
    assert nonspecific["orders"] == [
        {"reference": "ServiceRequest/console-mri-1", "display": "MRI lumbar spine without contrast",
         "expect": ["imaging-not-indicated"]}
    ]
    assert nonspecific["selected"] == ["ServiceRequest/console-mri-1"]
    assert nonspecific["patient"]["name"] == "Grace Okafor" and nonspecific["patient"]["age"] >= 42
    assert {p["key"] for p in body["orderPresets"]} >= {"xr-lumbar", "ct-lumbar", "mri-lumbar", "xr-sij"}


def build(console, **body: Any) -> dict[str, Any]:
    response = console.post("/console/api/request", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def invoke(console, built: dict[str, Any]) -> list[dict[str, Any]]:
    response = console.post(f"/cds-services/{built['serviceId']}", json=built["request"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cards"]


@pytest.mark.parametrize(
    ("slug", "hook"),
    [("console-axspa", "patient-view"), ("console-nonspecific", "patient-view"),
     ("console-nonspecific", "order-select"), ("console-nonspecific", "order-sign"), ("console-xss", "patient-view")],
)
def test_fixture_request_through_the_real_endpoint(console, slug: str, hook: str) -> None:
    built = build(console, fixture=slug, hook=hook)
    discovery = {s["hook"]: s for s in console.get("/cds-services").get_json()["services"]}
    assert built["serviceId"] == discovery[hook]["id"]
    assert set(built["request"]["prefetch"]) == set(discovery[hook]["prefetch"])  # full prefetch, no FHIR server
    assert "fhirServer" not in built["request"]
    cards = invoke(console, built)
    assert sorted(c["source"]["topic"]["code"] for c in cards) == built["expected"]
    assert built["expected"] == load_manifest(CONSOLE_DATA).get(slug).expected(hook)


def test_order_selections_and_composed_orders(console) -> None:
    unselected = build(console, fixture="console-nonspecific", hook="order-select",
                       orders=[{"reference": "ServiceRequest/console-mri-1", "selected": False},
                               {"preset": "xr-sij", "reason": "none", "selected": True}])
    context = unselected["request"]["context"]
    assert context["selections"] == ["ServiceRequest/console-order-2"]
    composed = context["draftOrders"]["entry"][1]["resource"]
    assert composed["code"]["coding"][0]["code"] == "72202" and "reasonCode" not in composed
    assert composed["subject"] == {"reference": "Patient/console-nonspecific"}
    assert unselected["expected"] is None  # composed orders have no manifest expectation
    assert invoke(console, unselected) == []  # SI-joint X-ray: not lumbar imaging, no card

    mri = build(console, fixture="console-nonspecific", hook="order-sign",
                orders=[{"preset": "mri-lumbar", "reason": "low-back-pain"}])
    assert [c["source"]["topic"]["code"] for c in invoke(console, mri)] == ["imaging-not-indicated"]


def test_pasted_bundle_is_described_and_resolved(console) -> None:
    info = console.post("/console/api/bundle", json={"bundle": HOSTILE_BUNDLE}).get_json()
    patient_id = "7f4c2a9e-0d1b-4c55-9b3e-000000000001"
    assert info["patient"]["id"] == patient_id
    assert info["resourceCounts"] == {"Condition": 1, "Patient": 1}  # the draft order is not part of the record
    assert info["orders"][0]["reference"] == "ServiceRequest/7f4c2a9e-0d1b-4c55-9b3e-000000000003"
    built = build(console, bundle=HOSTILE_BUNDLE, hook="order-select")
    prefetch = built["request"]["prefetch"]
    condition = prefetch["conditions"]["entry"][0]["resource"]
    assert condition["subject"] == {"reference": f"Patient/{patient_id}"}  # urn:uuid reference rewritten
    assert built["request"]["context"]["selections"] == ["ServiceRequest/7f4c2a9e-0d1b-4c55-9b3e-000000000003"]
    assert built["expected"] is None


def test_console_endpoints_store_nothing(console_app, console) -> None:
    """Bundles are processed in memory: only the real hook endpoint records (served cards, no data)."""
    console.post("/console/api/bundle", json={"bundle": HOSTILE_BUNDLE})
    build(console, bundle=HOSTILE_BUNDLE, hook="patient-view")
    build(console, fixture="console-axspa", hook="patient-view")
    console.post("/console/api/markdown", json={"texts": ["x"]})
    assert row_count(console_app, served_cards) == 0
    assert row_count(console_app, feedback) == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"fixture": "no-such-patient", "hook": "patient-view"}, 404, "fixture"),
        ({"fixture": "console-axspa", "hook": "encounter-start"}, 400, "hook"),
        ({"fixture": "console-axspa", "hook": "order-select"}, 400, "orders"),
        ({"fixture": "console-axspa", "hook": "order-sign", "orders": [{"preset": "pet-ct"}]}, 400, "orders[0].preset"),
        ({"fixture": "console-nonspecific", "hook": "order-select",
          "orders": [{"reference": "ServiceRequest/not-hers"}]}, 400, "orders[0].reference"),
        ({"fixture": "console-nonspecific", "hook": "order-select",
          "orders": [{"reference": "ServiceRequest/console-mri-1", "selected": False}]}, 400, "orders"),
        ({"bundle": {"resourceType": "Patient"}, "hook": "patient-view"}, 400, "bundle"),
        ({"bundle": {"resourceType": "Bundle", "entry": []}, "hook": "patient-view"}, 400, "bundle.entry"),
        ({"bundle": {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "a"}},
                                                         {"resource": {"resourceType": "Patient", "id": "b"}}]},
          "hook": "patient-view"}, 400, "bundle.entry"),
        ({"bundle": {"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]}, "hook": "patient-view"}, 400,
         "bundle.entry[0]"),
    ],
)
def test_request_errors_name_the_field(console, body: dict[str, Any], status: int, field: str) -> None:
    response = console.post("/console/api/request", json=body)
    assert response.status_code == status
    answer = response.get_json()
    assert answer["field"] == field and answer["message"]


def test_json_endpoints_require_json(console) -> None:
    assert console.post("/console/api/request", data="{}", content_type="text/plain").status_code == 415
    assert console.post("/console/api/request", data="{nope", content_type="application/json").status_code == 400
    assert console.post("/console/api/markdown", json=[1]).status_code == 400
    assert console.post("/console/api/markdown", json={"texts": ["a"] * 51}).status_code == 400


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

HOSTILE_MARKDOWN = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '<iframe src="javascript:alert(1)"></iframe>',
    "<a href=\"javascript:alert(1)\">x</a>",
    '<svg onload="alert(1)"></svg>',
    "![x](https://tracker.example/pixel.png)",
    "<style>body{display:none}</style>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "`<script>` in code",
]


class MarkupAudit(HTMLParser):
    """Every tag and attribute the browser would build from an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]


def audit(html: str) -> MarkupAudit:
    parser = MarkupAudit()
    parser.feed(html)
    parser.close()
    return parser


@pytest.mark.parametrize("source", HOSTILE_MARKDOWN)
def test_markdown_never_passes_markup_through(source: str) -> None:
    html = render_markdown(f"Before {source} after\n\n| a |\n|---|\n| {source} |")
    found = audit(html)
    assert set(found.tags) <= ALLOWED_TAGS, html
    assert not {"script", "img", "iframe", "svg", "style"} & set(found.tags), html
    for tag, name, value in found.attributes:
        assert not name.startswith("on") and name != "style", (tag, name, html)
        if name == "href":
            assert value.startswith(("https://", "http://", "mailto:")), html
    assert "<table>" in html


def test_markdown_keeps_card_formatting(make_app, tmp_path: Path) -> None:
    # the full detail (site setting card_detail: full) has the tables and the guideline links
    site = tmp_path / "site.yaml"
    site.write_text("card_detail: full\n", encoding="utf-8")
    app = make_app(site_config=site)
    app.config["CDS_CONSOLE_FIXTURES_DIR"] = str(CONSOLE_DATA)
    console = app.test_client()
    built = build(console, fixture="console-axspa", hook="patient-view")
    detail = invoke(console, built)[0]["detail"]
    response = console.post("/console/api/markdown", json={"texts": [detail, ""]})
    html, empty = response.get_json()["html"]
    assert empty == ""
    assert "<table>" in html and "<strong>" in html and "<li>" in html
    links = re.findall(r"<a [^>]*>", html)
    assert links and all('rel="noopener noreferrer"' in a and 'target="_blank"' in a and 'href="https://' in a
                          for a in links)


# --------------------------------------------------------------------------------------------
# Rule review sheet
# --------------------------------------------------------------------------------------------


@pytest.fixture
def wrong_expectations(tmp_path: Path) -> Path:
    """The console fixtures with one deliberately wrong expectation."""
    target = tmp_path / "fixtures"
    shutil.copytree(CONSOLE_DATA, target)
    manifest = yaml.safe_load((target / "manifest.yaml").read_text(encoding="utf-8"))
    manifest["patients"][0]["expected"]["patient-view"] = ["axspa-hla-b27", "self-management"]
    (target / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return target


def test_review_highlights_differences(console_app, console, wrong_expectations: Path) -> None:
    console_app.config["CDS_CONSOLE_FIXTURES_DIR"] = str(wrong_expectations)
    body = console.get("/console/api/review").get_json()
    assert body["failed"] == 1 and body["passed"] == body["checks"] - 1
    bad = next(r for r in body["results"] if not r["ok"])
    assert (bad["slug"], bad["hook"], bad["verdict"]) == ("console-axspa", "patient-view", "mismatch")
    assert bad["diff"]["missing"] == ["axspa-hla-b27", "self-management"]
    assert bad["diff"]["unexpected"] == ["axspa-referral"]

    html = console.get("/console/review").get_data(as_text=True)
    assert html.count('class="row-mismatch') == 1
    assert '<span class="chip missing" title="expected but not returned">axspa-hla-b27</span>' in html
    assert '<span class="chip unexpected" title="returned but not expected">axspa-referral</span>' in html
    only = console.get("/console/review?show=differences").get_data(as_text=True)
    assert only.count("data-slug=") == 1
    # the validation ran on its own database: the live analytics saw nothing
    assert row_count(console_app, served_cards) == 0


def test_review_all_ok_and_hostile_text_escaped(console) -> None:
    html = console.get("/console/review").get_data(as_text=True)
    assert "row-mismatch" not in html and "row-error" not in html
    assert "<script>window.__xss" not in html
    assert "&lt;script&gt;window.__xss" in html  # the hostile description, escaped


def test_review_without_fixtures(console_app, console, tmp_path: Path) -> None:
    console_app.config["CDS_CONSOLE_FIXTURES_DIR"] = str(tmp_path)
    assert console.get("/console/api/review").status_code == 404
    page = console.get("/console/review")
    assert page.status_code == 200 and "no fixture manifest" in page.get_data(as_text=True)
    fixtures = console.get("/console/api/fixtures").get_json()
    assert fixtures["fixtures"] == []
    response = console.post("/console/api/request", json={"fixture": "console-axspa", "hook": "patient-view"})
    assert response.status_code == 404
