"""End-to-end: the console in a real headless Chromium against a real HTTP server.

1. patient-view for an axSpA fixture and order-select for a nonspecific-pain fixture show the cards
   the fixture manifest expects; one suggestion is accepted and one card overridden with a reason;
   both then appear on the analytics page and in the database.
2. A Bundle and a fixture full of <script>, <img onerror>, javascript: links: nothing executes,
   the text shows as text, and the Content-Security-Policy never had to block anything.
3. The rule review sheet renders every check.
4. (CONSOLE_SCREENSHOTS_DIR set, `make screenshots`) the README/docs screenshots.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from cds_service.store import feedback, served_cards
from cds_service.tooling.fixtures import load_manifest, shift_dates

from .conftest import CONSOLE_DATA, WAIT_SECONDS, LiveServer, fixtures_dir_for_e2e, start_live_server, stop_live_server

pytestmark = pytest.mark.browser

HOSTILE_BUNDLE = CONSOLE_DATA / "hostile-bundle.json"
HOSTILE_BUNDLE_ANCHOR = date(2026, 11, 21)  # the day its dates were written for
OVERRIDE_COMMENT = "E2E: eight weeks of physiotherapy elsewhere, not in our record"

# Installed before any hostile data is loaded: records CSP violations and dialogs, so the test
# proves the sanitiser (not only the CSP) stopped the markup.
WATCH_SCRIPT = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
window.__dialogs = [];
window.alert = window.confirm = window.prompt = (m) => { window.__dialogs.push(String(m)); };
"""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = WAIT_SECONDS,
             message: str = "") -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def open_page(driver: WebDriver, live: LiveServer, path: str) -> None:
    driver.get(live.url + path)
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "true",
             message=f"{path} did not finish loading")


def click(driver: WebDriver, element: WebElement) -> None:
    """Scroll the element to the middle of the viewport (clear of the sticky top bar), then click."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'nearest'})", element)
    element.click()


def choose_hook(driver: WebDriver, hook: str) -> None:
    click(driver, driver.find_element(By.CSS_SELECTOR, f"input[name=hook][value='{hook}']"))


def run_hook(driver: WebDriver) -> list[WebElement]:
    """Click "Send hook request" and wait for the answer; returns the card elements."""
    status = driver.find_element(By.ID, "run-status")
    driver.execute_script("arguments[0].textContent = ''; arguments[0].className = 'run-status';", status)
    click(driver, driver.find_element(By.ID, "run-button"))
    wait_for(driver, lambda d: {"ok", "error"} & set(status.get_attribute("class").split()),
             message="the hook call did not finish")
    assert "ok" in status.get_attribute("class").split(), status.text
    return driver.find_elements(By.CSS_SELECTOR, "#cards .cds-card")


def topics(cards: list[WebElement]) -> list[str]:
    return sorted(card.get_attribute("data-topic") for card in cards)


def card_with_topic(cards: list[WebElement], topic: str) -> WebElement:
    return next(card for card in cards if card.get_attribute("data-topic") == topic)


def wait_outcome(driver: WebDriver, card: WebElement, outcome: str) -> str:
    status = card.find_element(By.CSS_SELECTOR, ".feedback-status")
    wait_for(driver, lambda d: status.get_attribute("data-outcome") == outcome, message=f"no {outcome} feedback")
    return status.text


def assert_no_console_errors(driver: WebDriver) -> None:
    """No JavaScript error and no failed request was logged by the pages visited so far."""
    severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe


def pick_fixtures(fixtures_dir: Path) -> tuple[str, str]:
    """An axSpA fixture (patient-view → axspa-referral) and a nonspecific-pain one whose selected
    lumbar order gets imaging-not-indicated on order-select; the documented examples when present."""
    manifest = load_manifest(fixtures_dir)
    slugs = {spec.slug: spec for spec in manifest.fixtures}
    axspa = "axspa-four-criteria" if "axspa-four-criteria" in slugs else next(
        s.slug for s in manifest.fixtures if "axspa-referral" in s.expected("patient-view"))
    nonspecific = "acute-nonspecific-mri-2wk" if "acute-nonspecific-mri-2wk" in slugs else next(
        s.slug for s in manifest.fixtures
        if "nonspecific" in s.slug and s.expected("order-select") == ["imaging-not-indicated"])
    return axspa, nonspecific


def db_rows(live: LiveServer, table: sa.Table) -> list[Any]:
    with live.store.engine.connect() as conn:
        return list(conn.execute(sa.select(table)))


# --------------------------------------------------------------------------------------------
# 1. Preview → feedback → analytics and database
# --------------------------------------------------------------------------------------------


def test_preview_feedback_reaches_analytics_and_database(live_server: LiveServer, browser: WebDriver) -> None:
    started = time.monotonic()
    fixtures_dir = fixtures_dir_for_e2e()
    manifest = load_manifest(fixtures_dir)
    axspa, nonspecific = pick_fixtures(fixtures_dir)
    open_page(browser, live_server, "/console/")
    browser.execute_script(WATCH_SCRIPT)

    # patient-view for the axSpA fixture
    Select(browser.find_element(By.ID, "fixture-select")).select_by_value(axspa)
    choose_hook(browser, "patient-view")
    cards = run_hook(browser)
    assert topics(cards) == manifest.get(axspa).expected("patient-view")
    assert browser.find_element(By.ID, "expectation").get_attribute("data-match") == "true"
    referral = card_with_topic(cards, "axspa-referral")
    assert "indicator-warning" in referral.get_attribute("class")
    assert referral.find_element(By.CSS_SELECTOR, ".card-detail li strong")  # compact criteria lines rendered
    source_link = referral.find_element(By.CSS_SELECTOR, ".card-source a")
    assert source_link.get_attribute("href").startswith("https://www.nice.org.uk/")
    suggestion = referral.find_element(By.CSS_SELECTOR, "button.suggestion")
    suggestion_uuid = suggestion.get_attribute("data-suggestion-uuid")
    referral_uuid = referral.get_attribute("data-card-uuid")
    click(browser, suggestion)
    assert "Accepted" in wait_outcome(browser, referral, "accepted")

    # order-select for the nonspecific-pain fixture (the manifest's selected orders)
    Select(browser.find_element(By.ID, "fixture-select")).select_by_value(nonspecific)
    choose_hook(browser, "order-select")
    order_items = browser.find_elements(By.CSS_SELECTOR, "#order-list li.order")
    assert len(order_items) == len(manifest.get(nonspecific).orders)
    cards = run_hook(browser)
    assert topics(cards) == manifest.get(nonspecific).expected("order-select")
    assert browser.find_element(By.ID, "expectation").get_attribute("data-match") == "true"
    imaging = card_with_topic(cards, "imaging-not-indicated")
    imaging_uuid = imaging.get_attribute("data-card-uuid")
    click(browser, imaging.find_element(By.CSS_SELECTOR, ".override-toggle"))
    reason_select = Select(imaging.find_element(By.CSS_SELECTOR, "select.override-reason"))
    reason_select.select_by_index(1)
    reason_display = reason_select.first_selected_option.text
    imaging.find_element(By.CSS_SELECTOR, "textarea.override-comment").send_keys(OVERRIDE_COMMENT)
    click(browser, imaging.find_element(By.CSS_SELECTOR, "button.override-submit"))
    assert reason_display in wait_outcome(browser, imaging, "overridden")

    # the raw exchange panel shows the real request and response
    raw_request = json.loads(browser.execute_script("return document.getElementById('raw-request').textContent"))
    assert raw_request["hook"] == "order-select" and "prefetch" in raw_request
    raw_response = json.loads(browser.execute_script("return document.getElementById('raw-response').textContent"))
    assert [c["uuid"] for c in raw_response["cards"]] == [imaging_uuid]
    assert "overridden" in browser.execute_script("return document.getElementById('raw-feedback').textContent")

    # the database holds both answers, joined to the cards the service served
    rows = {row.card_uuid: row for row in db_rows(live_server, feedback)}
    assert rows[referral_uuid].outcome == "accepted"
    assert json.loads(rows[referral_uuid].accepted_suggestions) == [suggestion_uuid]
    assert rows[imaging_uuid].outcome == "overridden"
    assert rows[imaging_uuid].override_display == reason_display
    assert rows[imaging_uuid].user_comment == OVERRIDE_COMMENT
    assert all(row.known_card and row.flag is None for row in rows.values())
    served = {row.card_uuid: row for row in db_rows(live_server, served_cards)}
    assert served[referral_uuid].topic == "axspa-referral"
    assert served[imaging_uuid].service_id == "lbp-imaging-order-select"

    # the analytics page shows them
    open_page(browser, live_server, "/console/analytics")
    referral_row = browser.find_element(By.CSS_SELECTOR, "#topic-table tr[data-topic='axspa-referral']")
    assert referral_row.find_element(By.CSS_SELECTOR, "td.accepted").text == "1"
    imaging_row = browser.find_element(
        By.CSS_SELECTOR, "#topic-table tr[data-topic='imaging-not-indicated'][data-service='lbp-imaging-order-select']")
    assert imaging_row.find_element(By.CSS_SELECTOR, "td.overridden").text == "1"
    assert reason_display in imaging_row.text
    comment = browser.find_element(By.CSS_SELECTOR, "#comments tr.comment-row[data-topic='imaging-not-indicated']")
    assert OVERRIDE_COMMENT in comment.text
    assert browser.find_elements(By.CSS_SELECTOR,
                                 "#topic-chart g.topic-row[data-topic='axspa-referral'] rect.bar-accepted")
    assert browser.find_elements(By.CSS_SELECTOR, "#topic-chart g.topic-row[data-topic='imaging-not-indicated'] "
                                                  "rect.bar-overridden")
    assert browser.find_elements(By.CSS_SELECTOR, "#trend-chart rect.bar-accepted")
    assert browser.find_elements(By.CSS_SELECTOR, "#trend-chart rect.bar-overridden")
    kpis = browser.find_element(By.ID, "kpis").text
    assert "Accepted" in kpis and "Overridden" in kpis
    assert browser.execute_script("return window.__cspViolations || []") == []
    assert_no_console_errors(browser)
    print(f"\n[console e2e] preview → feedback → analytics: {time.monotonic() - started:.1f} s")


# --------------------------------------------------------------------------------------------
# 2. Hostile data never executes
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hostile_bundle_file(tmp_path: Path) -> Path:
    """The hostile Bundle with its dates moved to today (so it still yields cards next year)."""
    bundle = json.loads(HOSTILE_BUNDLE.read_text(encoding="utf-8"))
    shifted = shift_dates(bundle, HOSTILE_BUNDLE_ANCHOR, datetime.now(UTC).date())
    path = tmp_path / "hostile-bundle.json"
    path.write_text(json.dumps(shifted), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hostile_fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A second server whose fixture list is the console's own, including a hostile fixture."""
    live = start_live_server(tmp_path_factory.mktemp("console-hostile"), CONSOLE_DATA)
    yield live
    stop_live_server(live)


def assert_nothing_executed(driver: WebDriver) -> None:
    state = driver.execute_script(
        "return {xss: window.__xss === undefined ? null : String(window.__xss),"
        " violations: window.__cspViolations, dialogs: window.__dialogs,"
        " scripts: document.querySelectorAll('#main script').length,"
        " active: document.querySelectorAll('#main img, #main iframe, #main svg [onload], #main [onerror],"
        " #main [onload], #main a[href^=\"javascript\"]').length}"
    )
    assert state == {"xss": None, "violations": [], "dialogs": [], "scripts": 0, "active": 0}, state
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raising is the assertion


def test_hostile_bundle_and_fixture_never_execute(
    live_server: LiveServer, hostile_fixture_server: LiveServer, browser: WebDriver, hostile_bundle_file: Path
) -> None:
    started = time.monotonic()
    open_page(browser, live_server, "/console/")
    browser.execute_script(WATCH_SCRIPT)
    click(browser, browser.find_element(By.CSS_SELECTOR, "input[name=source][value=bundle]"))

    # upload
    browser.find_element(By.ID, "bundle-file").send_keys(str(hostile_bundle_file))
    name = browser.find_element(By.ID, "patient-name")
    wait_for(browser, lambda d: "<script>" in name.text, message="the uploaded Bundle was not loaded")
    assert "window.__xss = 'name'" in name.text and "<img src=x onerror=" in name.text
    choose_hook(browser, "patient-view")
    cards = run_hook(browser)
    assert topics(cards) == ["self-management"]
    detail = cards[0].find_element(By.CSS_SELECTOR, ".card-detail").text
    assert "Low back pain <script>window.__xss = 'display'</script>" in detail
    assert_nothing_executed(browser)

    # paste (typed into the textarea), then order-select with the Bundle's own draft order and a composed one
    textarea = browser.find_element(By.ID, "bundle-text")
    textarea.clear()
    textarea.send_keys(hostile_bundle_file.read_text(encoding="utf-8"))
    click(browser, browser.find_element(By.ID, "bundle-load"))
    wait_for(browser, lambda d: "Bundle loaded" in d.find_element(By.ID, "run-status").text)
    choose_hook(browser, "order-select")
    order_text = browser.find_element(By.ID, "order-list").text
    assert "MRI lumbar <script>window.__xss = 'order'</script>" in order_text
    Select(browser.find_element(By.ID, "compose-preset")).select_by_value("xr-lumbar")
    click(browser, browser.find_element(By.ID, "compose-add"))
    cards = run_hook(browser)
    assert topics(cards) == ["imaging-not-indicated", "imaging-not-indicated"]
    details = " ".join(c.find_element(By.CSS_SELECTOR, ".card-detail").text for c in cards)
    assert "MRI lumbar <script>window.__xss = 'order'</script>" in details
    assert_nothing_executed(browser)
    raw = browser.execute_script("return document.getElementById('raw-request').textContent")
    assert "<script>window.__xss = 'order'</script>" in raw  # the raw panel shows it, as text

    # a hostile fixture (description, names, condition text) from the fixture list
    open_page(browser, hostile_fixture_server, "/console/?fixture=console-xss")
    browser.execute_script(WATCH_SCRIPT)
    Select(browser.find_element(By.ID, "fixture-select")).select_by_value("console-xss")
    description = browser.find_element(By.ID, "fixture-description").text
    assert "<script>window.__xss = \"manifest\"</script>" in description
    choose_hook(browser, "patient-view")
    cards = run_hook(browser)
    assert topics(cards) == ["self-management"]
    assert_nothing_executed(browser)
    assert_no_console_errors(browser)
    print(f"\n[console e2e] hostile data: {time.monotonic() - started:.1f} s")


# --------------------------------------------------------------------------------------------
# 3. Rule review sheet
# --------------------------------------------------------------------------------------------


def test_review_sheet_lists_every_check(live_server: LiveServer, browser: WebDriver) -> None:
    browser.get(live_server.url + "/console/review")
    table = wait_for(browser, lambda d: d.find_element(By.ID, "review-table"))
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr[data-slug]")
    manifest = load_manifest(fixtures_dir_for_e2e())
    assert {r.get_attribute("data-slug") for r in rows} == {s.slug for s in manifest.fixtures}
    hooks = {r.get_attribute("data-hook") for r in rows}
    assert hooks == {"patient-view", "order-select", "order-sign"}
    summary = browser.find_element(By.ID, "review-summary").text
    assert f"of {len(rows)} checks as expected" in summary
    # the preview link of a row opens that fixture and hook and runs it
    row = next(r for r in rows if r.get_attribute("data-hook") == "patient-view")
    slug = row.get_attribute("data-slug")
    click(browser, row.find_element(By.LINK_TEXT, "preview"))
    wait_for(browser, lambda d: "ok" in d.find_element(By.ID, "run-status").get_attribute("class").split())
    assert Select(browser.find_element(By.ID, "fixture-select")).first_selected_option.get_attribute("value") == slug


# --------------------------------------------------------------------------------------------
# 4. Screenshots for README / docs (make screenshots)
# --------------------------------------------------------------------------------------------

SCREENSHOTS_DIR = os.environ.get("CONSOLE_SCREENSHOTS_DIR")


def full_page_screenshot(driver: WebDriver, path: Path, width: int = 1440, max_height: int = 2600) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height, 900), max_height))
    time.sleep(0.2)  # let layout settle after the resize
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 1000)


def test_screenshots(tmp_path_factory: pytest.TempPathFactory, browser: WebDriver) -> None:
    """The screenshot tooling works on every run (into a temporary directory); `make screenshots`
    points CONSOLE_SCREENSHOTS_DIR at docs/screenshots to regenerate the README images."""
    from .demo_data import seed_history

    out = Path(SCREENSHOTS_DIR) if SCREENSHOTS_DIR else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    live = start_live_server(tmp_path_factory.mktemp("console-screens"), fixtures_dir_for_e2e())
    try:
        seed_history(live.store, weeks=12)
        axspa, nonspecific = pick_fixtures(fixtures_dir_for_e2e())

        open_page(browser, live, f"/console/?fixture={axspa}&hook=patient-view")
        run_hook(browser)
        full_page_screenshot(browser, out / "console-preview.png")

        open_page(browser, live, f"/console/?fixture={nonspecific}&hook=order-select")
        cards = run_hook(browser)
        card = card_with_topic(cards, "imaging-not-indicated")
        click(browser, card.find_element(By.CSS_SELECTOR, ".override-toggle"))
        Select(card.find_element(By.CSS_SELECTOR, "select.override-reason")).select_by_index(1)
        comment = card.find_element(By.CSS_SELECTOR, "textarea.override-comment")
        comment.send_keys("Eight weeks of physiotherapy elsewhere")
        browser.execute_script("document.getElementById('raw-request-details').open = true")
        full_page_screenshot(browser, out / "console-preview-order-select.png")

        open_page(browser, live, "/console/analytics")
        full_page_screenshot(browser, out / "console-analytics.png")

        browser.get(live.url + "/console/review")
        wait_for(browser, lambda d: d.find_element(By.ID, "review-table"))
        browser.set_window_size(1440, 1000)
        browser.save_screenshot(str(out / "console-review.png"))
    finally:
        stop_live_server(live)
    for name in ("console-preview.png", "console-preview-order-select.png", "console-analytics.png",
                 "console-review.png"):
        assert (out / name).stat().st_size > 10_000
