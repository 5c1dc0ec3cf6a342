"""The launch and the save over real HTTP (no browser), against each sandbox FHIR server behind the EHR
launch harness: the happy path step by step, then every failure path the issue names.

The HTTP client plays the browser: it follows redirects by hand so a test can tamper with one step.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from cds_service.tooling.ehr_launch import EhrLaunchServer

from .conftest import AXSPA_SLUG, HTTP_TIMEOUT, Ehr, Service, start_service

pytestmark = pytest.mark.integration
ITEM = "nsaid-response-within-48h"


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {**_query(url), **changes}
    return urlunsplit(parts._replace(query=urlencode(query)))


def begin(browser: requests.Session, service: Service, ehr: Ehr, harness: EhrLaunchServer | None = None) -> str:
    """EHR launch up to the EHR's authorize endpoint; returns the authorize URL the app redirected to."""
    harness = harness or ehr.harness
    patient = ehr.patients[AXSPA_SLUG].patient_id
    launch_id = harness.new_launch(patient, json.dumps({"linkIds": [ITEM]}))
    response = browser.get(
        f"{service.url}/smart/launch",
        params={"iss": harness.iss, "launch": launch_id},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 302, response.text[:300]
    return response.headers["Location"]


def authorize(browser: requests.Session, authorize_url: str) -> str:
    """The EHR approves; returns the app's callback URL (code + state)."""
    response = browser.get(authorize_url, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert response.status_code == 302, response.text[:300]
    return response.headers["Location"]


def open_form(browser: requests.Session, service: Service, ehr: Ehr, harness: EhrLaunchServer | None = None) -> str:
    """The whole launch; returns the form page's HTML."""
    callback = authorize(browser, begin(browser, service, ehr, harness))
    response = browser.get(callback, timeout=HTTP_TIMEOUT)
    assert response.status_code == 200 and 'id="assessment"' in response.text, response.text[:500]
    return response.text


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, name
    return match.group(1)


def save(browser: requests.Session, service: Service, html: str, **answers: str) -> requests.Response:
    form = {"s": hidden(html, "s"), "csrf": hidden(html, "csrf"), **{f"a.{k}": v for k, v in answers.items()}}
    return browser.post(f"{service.url}/smart/save", data=form, timeout=HTTP_TIMEOUT)


def responses(ehr: Ehr) -> list[dict[str, Any]]:
    return ehr.question_responses(ehr.patients[AXSPA_SLUG].patient_id)


def kept(html: str, link_id: str, value: str) -> bool:
    """The answer is still selected on the page."""
    return re.search(rf'name="a\.{re.escape(link_id)}" value="{value}" checked', html) is not None


# ----------------------------------------------------------------------------------------- happy path


def test_launch_sends_pkce_s256_state_aud_and_v2_scopes(service: Service, ehr: Ehr) -> None:
    with requests.Session() as browser:
        authorize_url = begin(browser, service, ehr)
    query = _query(authorize_url)
    assert authorize_url.startswith(ehr.harness.smart_configuration()["authorization_endpoint"] + "?")
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32 and query["aud"] == ehr.harness.iss and query["launch"]
    scopes = query["scope"].split()
    assert {"launch", "openid", "fhirUser", "patient/QuestionnaireResponse.crs", "patient/Patient.r"} <= set(scopes)
    assert "offline_access" not in scopes and "online_access" in scopes
    assert all(
        s in {"launch", "openid", "fhirUser", "online_access"} or re.fullmatch(r"patient/\w+\.c?r?u?d?s?", s)
        for s in scopes
    )


def test_saved_response_is_on_the_server_and_token_never_logged(
    service: Service, ehr: Ehr, caplog: pytest.LogCaptureFixture
) -> None:
    before = len(responses(ehr))
    caplog.set_level(logging.DEBUG)
    with requests.Session() as browser:
        html = open_form(browser, service, ehr)
        response = save(browser, service, html, **{ITEM: "false"})
    assert response.status_code == 201, response.text[:500]
    # pre-filled from the record (the fixture's earlier questionnaire answers), marked as such; the
    # item the card asks about is not documented, so it stays blank
    assert 'name="p.night-waking-second-half" value="true"' in html and "From the record: " in html
    assert f'name="p.{ITEM}"' not in html
    patient = ehr.patients[AXSPA_SLUG].patient
    banner = re.search(r'id="patient-banner"[^>]*>([^<]*)<', html)
    assert banner and f"born {patient['birthDate']}" in banner.group(1) and patient["gender"] in banner.group(1)
    assert len(responses(ehr)) == before + 1
    issued = list(ehr.harness.tokens)
    assert issued and "smart questionnaire response saved" in caplog.text  # the app's records were captured
    for token in issued:
        assert token not in caplog.text
        assert all(token not in (c.value or "") for c in browser.cookies)  # the cookie is encrypted


def test_standalone_launch_gets_the_ehr_chosen_patient(service: Service, ehr: Ehr) -> None:
    ehr.harness.standalone_patient = ehr.patients[AXSPA_SLUG].patient_id
    try:
        with requests.Session() as browser:
            response = browser.get(
                f"{service.url}/smart/launch",
                params={"iss": ehr.harness.iss},
                allow_redirects=False,
                timeout=HTTP_TIMEOUT,
            )
            query = _query(response.headers["Location"])
            assert "launch" not in query and "launch/patient" in query["scope"].split()
            page = browser.get(authorize(browser, response.headers["Location"]), timeout=HTTP_TIMEOUT)
    finally:
        ehr.harness.standalone_patient = None
    assert page.status_code == 200 and 'id="assessment"' in page.text
    assert 'id="asked"' not in page.text  # no card asked for anything


# ----------------------------------------------------------------------------------------- failures


def test_bad_state_is_refused_and_the_code_never_exchanged(service: Service, ehr: Ehr) -> None:
    with requests.Session() as browser:
        callback = authorize(browser, begin(browser, service, ehr))
        code = _query(callback)["code"]
        response = browser.get(_with_query(callback, state="forged-state-" + "x" * 20), timeout=HTTP_TIMEOUT)
    assert response.status_code == 400
    assert "does not belong to the launch" in response.text
    assert ehr.harness.codes[code].used is False  # no token request was made with it


def test_wrong_pkce_verifier_gets_no_token(service: Service, ehr: Ehr) -> None:
    """Someone swaps the code_challenge on the way to the EHR: the app's real verifier then fails."""
    issued = len(ehr.harness.tokens)
    with requests.Session() as browser:
        authorize_url = begin(browser, service, ehr)
        forged = _with_query(authorize_url, code_challenge="A" * 43)
        response = browser.get(authorize(browser, forged), timeout=HTTP_TIMEOUT)
    assert response.status_code == 400
    assert "refused to issue an access token" in response.text
    assert len(ehr.harness.tokens) == issued


def test_token_endpoint_checks_the_verifier(ehr: Ehr) -> None:
    """The harness as an EHR: a code with a wrong verifier, then a reused code, are refused."""
    import base64
    import hashlib

    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    launch = ehr.harness.new_launch(ehr.patients[AXSPA_SLUG].patient_id)
    params = {
        "response_type": "code",
        "client_id": "c",
        "redirect_uri": "http://127.0.0.1:1/cb",
        "state": "s" * 20,
        "aud": ehr.harness.iss,
        "launch": launch,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "launch patient/Patient.r",
    }
    location = requests.get(
        f"{ehr.harness.base_url}/auth/authorize", params=params, allow_redirects=False, timeout=HTTP_TIMEOUT
    ).headers["Location"]
    code = _query(location)["code"]
    body = {"grant_type": "authorization_code", "code": code, "client_id": "c", "redirect_uri": params["redirect_uri"]}
    wrong = requests.post(
        f"{ehr.harness.base_url}/auth/token", data={**body, "code_verifier": "w" * 64}, timeout=HTTP_TIMEOUT
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    again = requests.post(
        f"{ehr.harness.base_url}/auth/token", data={**body, "code_verifier": verifier}, timeout=HTTP_TIMEOUT
    )
    assert again.status_code == 400  # one try per code


def test_iss_off_the_allowlist_is_never_contacted(tmp_path: Any, ehr: Ehr, fhir_recorder: Any) -> None:
    """Only the harness is allowed: a launch naming another (loopback) FHIR server makes no request to it."""
    strict = start_service(tmp_path, CDS_FHIR_ALLOWLIST=ehr.harness.iss)
    try:
        response = requests.get(
            f"{strict.url}/smart/launch",
            params={"iss": fhir_recorder.base, "launch": "x"},
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        allowed = requests.get(
            f"{strict.url}/smart/launch",
            params={"iss": ehr.harness.iss, "launch": "x"},
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
    finally:
        strict.stop()
    assert response.status_code == 403 and "not one this service is configured" in response.text
    assert fhir_recorder.requests == []
    assert allowed.status_code == 302  # the same service launches against the allowed server


def test_expired_access_token_is_renewed_with_the_refresh_token(service: Service, ehr: Ehr) -> None:
    """online_access: the EHR issued a refresh token, so an expired access token is renewed and the save
    goes through; the renewed token is kept for the next save."""
    before = len(responses(ehr))
    with requests.Session() as browser:
        html = open_form(browser, service, ehr)
        ehr.harness.expire_tokens()
        issued = len(ehr.harness.tokens)
        first = save(browser, service, html, **{ITEM: "true"})
        second = save(browser, service, html, fever="false")
    assert [first.status_code, second.status_code] == [201, 201], first.text[:300]
    assert len(ehr.harness.tokens) == issued + 1  # one renewal, reused by the second save
    assert len(responses(ehr)) == before + 2


def test_expired_token_on_save_keeps_the_answers(service: Service, ehr: Ehr) -> None:
    """The EHR session ended: no renewal possible; the answers stay on the page."""
    before = len(responses(ehr))
    with requests.Session() as browser:
        html = open_form(browser, service, ehr)
        ehr.harness.end_sessions()
        response = save(browser, service, html, **{ITEM: "true", "fever": "false"})
    assert response.status_code == 401
    assert "token expired or was revoked" in response.text
    assert kept(response.text, ITEM, "true") and kept(response.text, "fever", "false")
    assert len(responses(ehr)) == before


def test_server_refusing_the_write_is_reported_and_answers_kept(service: Service, ehr: Ehr) -> None:
    before = len(responses(ehr))
    with requests.Session() as browser:
        html = open_form(browser, service, ehr)
        ehr.harness.refuse_writes = True
        try:
            response = save(browser, service, html, **{ITEM: "true"})
        finally:
            ehr.harness.refuse_writes = False
        assert response.status_code == 403 and "refused to store" in response.text
        assert kept(response.text, ITEM, "true")
        retry = save(browser, service, response.text, **{ITEM: "true"})  # the same page, sent again
    assert retry.status_code == 201
    assert len(responses(ehr)) == before + 1


def test_server_down_on_save(service: Service, ehr: Ehr) -> None:
    harness = EhrLaunchServer(ehr.fhir.base_url, ehr.fhir.token).start()
    try:
        with requests.Session() as browser:
            html = open_form(browser, service, ehr, harness)
            harness.stop()
            response = save(browser, service, html, **{ITEM: "true"})
    finally:
        harness.stop()
    assert response.status_code == 502 and "did not answer" in response.text
    assert kept(response.text, ITEM, "true")


def test_csrf_and_cross_site_posts_are_refused(service: Service, ehr: Ehr) -> None:
    before = len(responses(ehr))
    with requests.Session() as browser:
        html = open_form(browser, service, ehr)
        form = {"s": hidden(html, "s"), f"a.{ITEM}": "true"}
        no_token = browser.post(f"{service.url}/smart/save", data=form, timeout=HTTP_TIMEOUT)
        wrong = browser.post(f"{service.url}/smart/save", data={**form, "csrf": "0" * 64}, timeout=HTTP_TIMEOUT)
        cross = browser.post(
            f"{service.url}/smart/save",
            data={**form, "csrf": hidden(html, "csrf")},
            timeout=HTTP_TIMEOUT,
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        )
    with requests.Session() as stranger:  # right form, no launch cookie
        cookieless = stranger.post(
            f"{service.url}/smart/save", data={**form, "csrf": hidden(html, "csrf")}, timeout=HTTP_TIMEOUT
        )
    assert [no_token.status_code, wrong.status_code, cross.status_code, cookieless.status_code] == [403, 403, 403, 401]
    assert len(responses(ehr)) == before


def test_pages_carry_a_strict_csp_and_no_inline_script(service: Service, ehr: Ehr) -> None:
    with requests.Session() as browser:
        callback = authorize(browser, begin(browser, service, ehr))
        page = browser.get(callback, timeout=HTTP_TIMEOUT)
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["Cache-Control"] == "no-store"
    assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []
    assert "http" not in " ".join(re.findall(r'(?:src|href)="([^"]+)"', page.text))  # nothing from another host


def test_patient_scoped_token_reads_only_its_patient(service: Service, ehr: Ehr) -> None:
    with requests.Session() as browser:
        open_form(browser, service, ehr)
    token, grant = next(reversed(list(ehr.harness.tokens.items())))
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    own = requests.get(f"{ehr.harness.iss}/Condition?patient={grant.patient}", headers=headers, timeout=HTTP_TIMEOUT)
    other = requests.get(f"{ehr.harness.iss}/Condition?patient=someone-else", headers=headers, timeout=HTTP_TIMEOUT)
    everyone = requests.get(f"{ehr.harness.iss}/Condition", headers=headers, timeout=HTTP_TIMEOUT)
    assert [own.status_code, other.status_code, everyone.status_code] == [200, 403, 403]


def test_open_mode_needs_no_token_and_answers_cors(service: Service, ehr: Ehr) -> None:
    """The CDS Hooks sandbox's open launch: FHIR without a token, CORS from the sandbox's origin,
    and the app still launches (the EHR still runs the OAuth dance)."""
    patient = ehr.patients[AXSPA_SLUG].patient_id
    with EhrLaunchServer(ehr.fhir.base_url, ehr.fhir.token, open_mode=True) as harness:
        read = requests.get(
            f"{harness.iss}/Patient/{patient}", timeout=HTTP_TIMEOUT, headers={"Origin": "http://localhost:8080"}
        )
        preflight = requests.options(
            f"{harness.iss}/_services/smart/Launch",
            timeout=HTTP_TIMEOUT,
            headers={"Origin": "http://localhost:8080", "Access-Control-Request-Method": "POST"},
        )
        launch = requests.post(
            f"{harness.iss}/_services/smart/Launch",
            timeout=HTTP_TIMEOUT,
            json={"launchUrl": f"{service.url}/smart/launch", "parameters": {"patient": patient}},
        )
        with requests.Session() as browser:
            html = open_form(browser, service, ehr, harness)
    assert read.status_code == 200 and read.json()["id"] == patient
    assert read.headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
    assert preflight.status_code == 204 and "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert launch.status_code == 200 and launch.json()["launch_id"]
    assert 'id="assessment"' in html


def test_secured_mode_refuses_a_missing_token_and_a_launch_without_patient(ehr: Ehr) -> None:
    no_token = requests.get(f"{ehr.harness.iss}/Patient", timeout=HTTP_TIMEOUT)
    no_patient = requests.post(
        f"{ehr.harness.iss}/_services/smart/Launch",
        json={"parameters": {}},
        headers={"Authorization": f"Bearer {ehr.fhir.token}"},
        timeout=HTTP_TIMEOUT,
    )
    assert no_token.status_code == 401 and no_token.json()["resourceType"] == "OperationOutcome"
    assert no_patient.status_code == 400 and no_patient.json()["field"] == "parameters.patient"


def test_a_patient_id_that_is_not_a_fhir_id_is_refused(service: Service, ehr: Ehr) -> None:
    """The token's patient goes into search URLs: "p1&_id=p2" must not become a second parameter."""
    launch_id = ehr.harness.new_launch("p1&_id=p2")
    with requests.Session() as browser:
        response = browser.get(
            f"{service.url}/smart/launch",
            params={"iss": ehr.harness.iss, "launch": launch_id},
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        page = browser.get(authorize(browser, response.headers["Location"]), timeout=HTTP_TIMEOUT)
    assert page.status_code == 400 and "which patient" in page.text


def test_reloading_the_form_after_the_token_lifetime_renews_it(service: Service, ehr: Ehr) -> None:
    import time

    with EhrLaunchServer(ehr.fhir.base_url, ehr.fhir.token, token_seconds=1) as harness:
        with requests.Session() as browser:
            html = open_form(browser, service, ehr, harness)
            time.sleep(1.2)  # past the token's expires_in, by the app's own clock
            issued = len(harness.tokens)
            again = browser.get(f"{service.url}/smart/app", params={"s": hidden(html, "s")}, timeout=HTTP_TIMEOUT)
            harness.end_sessions()
            time.sleep(1.2)
            ended = browser.get(f"{service.url}/smart/app", params={"s": hidden(html, "s")}, timeout=HTTP_TIMEOUT)
    assert again.status_code == 200 and 'id="assessment"' in again.text
    assert len(harness.tokens) == issued + 1
    assert ended.status_code == 401 and "Launch the app again" in ended.text
