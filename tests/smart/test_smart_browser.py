"""End-to-end in a real headless Chromium, on each sandbox FHIR server behind the EHR launch harness:

patient-view (over HTTP, no prefetch) -> a card whose criteria the Questionnaire captures are not
documented carries a `smart` link -> the EHR registers the launch and opens the app -> SMART EHR
launch (discovery, authorize with PKCE, token) -> the form asks the card's items first -> answer ->
save -> the QuestionnaireResponse is on the FHIR server -> patient-view again decides on it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from console.conftest import WAIT_SECONDS, chromium_available, new_browser
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import (
    AXSPA_SLUG,
    RED_FLAG_SLUG,
    Ehr,
    Service,
    asked_link_ids,
    ehr_launch_url,
    patient_view,
    smart_link,
    topics,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration]
QUESTIONNAIRE = "http://example.org/fhir/lbp-cds/Questionnaire/back-pain-assessment|1.0.0"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    reason = chromium_available()
    if reason:
        pytest.fail(reason)  # `make test` installs it; a missing browser is an error, not a skip
    profile = tmp_path_factory.mktemp("smart-chromium")
    driver = new_browser(profile, width=1000, height=900)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_ready(driver: WebDriver) -> None:
    WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(
        lambda d: d.execute_script("return document.body && document.body.dataset.ready") == "true",
        "the app page did not finish loading",
    )


def answer_yes_and_save(driver: WebDriver, link_id: str) -> None:
    item = driver.find_element(By.CSS_SELECTOR, f"#asked .item[data-link-id='{link_id}']")
    yes = item.find_element(By.CSS_SELECTOR, "input[value='true']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", yes)
    yes.click()
    save = driver.find_element(By.ID, "save")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", save)
    save.click()
    WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(
        lambda d: d.find_elements(By.ID, "saved") or d.find_elements(By.ID, "error"), "saving did not finish"
    )
    errors = driver.find_elements(By.ID, "error")
    assert not errors, errors[0].text


def severe_console_messages(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def loop(service: Service, ehr: Ehr, browser: WebDriver, slug: str, before: str, link_id: str) -> dict[str, Any]:
    """One pass: card -> link -> launch -> answer yes to link_id -> save; returns the next patient-view."""
    patient_id = ehr.patients[slug].patient_id
    first = patient_view(service, ehr, slug)
    assert before in topics(first)
    link = smart_link(first, before)
    assert link["url"] == f"{service.url}/smart/launch"
    assert link_id in asked_link_ids(link)
    assert link["label"].startswith("Ask about: ")
    responses_before = ehr.question_responses(patient_id)

    browser.get(ehr_launch_url(ehr, link, patient_id))
    wait_ready(browser)
    assert browser.current_url.startswith(f"{service.url}/smart/app?s="), browser.current_url
    asked = [e.get_attribute("data-link-id") for e in browser.find_elements(By.CSS_SELECTOR, "#asked .item")]
    assert asked == [i for i in asked_link_ids(link) if i in asked] and link_id in asked
    first_item = browser.find_elements(By.CSS_SELECTOR, "form .item")[0]
    assert first_item.get_attribute("data-link-id") == asked[0]  # the card's items come first
    answer_yes_and_save(browser, link_id)
    assert severe_console_messages(browser) == []

    new = [r for r in ehr.question_responses(patient_id) if r["id"] not in {x["id"] for x in responses_before}]
    assert len(new) == 1, new
    response = new[0]
    assert response["questionnaire"] == QUESTIONNAIRE
    assert response["status"] == "completed"
    assert response["subject"]["reference"] == f"Patient/{patient_id}"
    assert response["author"]["reference"] == "Practitioner/ehr-harness-user"
    answers = {i["linkId"]: i["answer"] for g in response["item"] for i in g.get("item", [])}
    assert answers[link_id] == [{"valueBoolean": True}]
    return patient_view(service, ehr, slug)


def test_axspa_criterion_answered_in_the_app_gives_referral(service: Service, ehr: Ehr, browser: WebDriver) -> None:
    after = loop(service, ehr, browser, AXSPA_SLUG, "axspa-hla-b27", "nsaid-response-within-48h")
    assert "axspa-referral" in topics(after)
    assert "axspa-hla-b27" not in topics(after)


def test_saddle_anaesthesia_answered_in_the_app_gives_cauda_equina(
    service: Service, ehr: Ehr, browser: WebDriver
) -> None:
    after = loop(service, ehr, browser, RED_FLAG_SLUG, "red-flag", "saddle-anaesthesia")
    assert "cauda-equina" in topics(after)
