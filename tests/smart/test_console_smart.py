"""The console as the EHR, in real Chromium: the preview's smart link opens the assessment app for the
previewed fixture patient, the answer is saved, and the next preview of the same patient decides on it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from console.conftest import (
    PROJECT_FIXTURES,
    WAIT_SECONDS,
    LiveServer,
    chromium_available,
    new_browser,
    start_live_server,
    stop_live_server,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from .conftest import AXSPA_SLUG

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("console-smart"), PROJECT_FIXTURES)
    yield live
    ehr = live.app.extensions.get("cds_console", {}).get("ehr")
    if ehr is not None:
        ehr.stop()
    stop_live_server(live)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    reason = chromium_available()
    if reason:
        pytest.fail(reason)
    profile = tmp_path_factory.mktemp("console-smart-chromium")
    driver = new_browser(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver: WebDriver, condition, message: str):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition, message)


def click(driver: WebDriver, element: WebElement) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def preview(driver: WebDriver) -> list[WebElement]:
    status = driver.find_element(By.ID, "run-status")
    driver.execute_script("arguments[0].textContent = ''; arguments[0].className = 'run-status';", status)
    click(driver, driver.find_element(By.ID, "run-button"))
    wait(driver, lambda d: {"ok", "error"} & set(status.get_attribute("class").split()), "the preview did not finish")
    assert "ok" in status.get_attribute("class").split(), status.text
    return driver.find_elements(By.CSS_SELECTOR, "#cards .cds-card")


def topics(cards: list[WebElement]) -> list[str]:
    return sorted(card.get_attribute("data-topic") for card in cards)


def test_console_follows_the_smart_link_and_the_next_preview_uses_the_answer(
    console: LiveServer, browser: WebDriver
) -> None:
    browser.get(console.url + "/console/")
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready") == "true", "console not ready")
    Select(browser.find_element(By.ID, "fixture-select")).select_by_value(AXSPA_SLUG)
    click(browser, browser.find_element(By.CSS_SELECTOR, "input[name=hook][value='patient-view']"))
    cards = preview(browser)
    assert topics(cards) == ["axspa-hla-b27"]
    console_tab = browser.current_window_handle
    button = cards[0].find_element(By.CSS_SELECTOR, "button.smart-link")
    assert "NSAID response" in button.text
    click(browser, button)
    wait(browser, lambda d: len(d.window_handles) == 2, "the app did not open in a new tab")
    browser.switch_to.window(next(h for h in browser.window_handles if h != console_tab))
    wait(
        browser,
        lambda d: d.execute_script("return document.body && document.body.dataset.ready") == "true",
        "the app did not load",
    )
    assert "/smart/app?s=" in browser.current_url
    item = browser.find_element(By.CSS_SELECTOR, "#asked .item[data-link-id='nsaid-response-within-48h']")
    click(browser, item.find_element(By.CSS_SELECTOR, "input[value='true']"))
    click(browser, browser.find_element(By.ID, "save"))
    wait(browser, lambda d: d.find_elements(By.ID, "saved") or d.find_elements(By.ID, "error"), "no save result")
    assert browser.find_elements(By.ID, "saved"), browser.find_element(By.ID, "error").text
    browser.close()
    browser.switch_to.window(console_tab)

    assert topics(preview(browser)) == ["axspa-referral"]
    ehr = console.app.extensions["cds_console"]["ehr"]
    written = ehr.written(f"{AXSPA_SLUG}-pt")
    assert len(written) == 1 and written[0]["questionnaire"].endswith("|1.0.0")
    assert written[0]["author"] == {"reference": "Practitioner/console-informaticist"}
    assert Path(ehr.dir).is_relative_to(Path(console.app.extensions["cds"].settings.data_dir))
