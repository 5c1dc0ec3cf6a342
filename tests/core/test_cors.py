"""CORS: browser EHR simulators (the CDS Hooks sandbox) send a preflight before every call."""

ORIGIN = "https://sandbox.cds-hooks.org"


def test_preflight_for_a_configured_origin(make_app):
    client = make_app(environment="production", cors_origins=(ORIGIN,)).test_client()
    response = client.options("/cds-services/lbp-patient-view", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Origin" in response.headers["Vary"]


def test_actual_request_carries_allow_origin(make_app):
    client = make_app(environment="production", cors_origins=(ORIGIN,)).test_client()
    response = client.get("/cds-services", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_unconfigured_origin_is_refused_in_production(make_app):
    client = make_app(environment="production", cors_origins=(ORIGIN,)).test_client()
    response = client.options("/cds-services", headers={"Origin": "https://evil.example",
                                                        "Access-Control-Request-Method": "GET"})
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in client.get(
        "/cds-services", headers={"Origin": "https://evil.example"}).headers


def test_development_allows_any_origin_when_none_configured(make_app):
    client = make_app(environment="development").test_client()
    response = client.options("/cds-services", headers={"Origin": "http://localhost:3000",
                                                        "Access-Control-Request-Method": "GET"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_lookalike_and_null_origins_are_refused_in_production(make_app):
    client = make_app(environment="production", cors_origins=(ORIGIN,)).test_client()
    for origin in ("null", ORIGIN + ".evil.example", ORIGIN.replace("https", "http"), ORIGIN + ":443",
                   ORIGIN.upper(), ORIGIN + "/", "https://evil.example/" + ORIGIN):
        preflight = client.options("/cds-services/lbp-patient-view",
                                   headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 403, origin
        assert preflight.get_json()["error"] == "origin-not-allowed"
        call = client.get("/cds-services", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in call.headers, origin


def test_production_without_configured_origins_allows_none(make_app):
    client = make_app(environment="production").test_client()
    response = client.options("/cds-services", headers={"Origin": "http://localhost:3000",
                                                        "Access-Control-Request-Method": "GET"})
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in client.get("/cds-services", headers={"Origin": ORIGIN}).headers


def test_credentials_are_never_allowed_even_with_a_wildcard(make_app):
    client = make_app(environment="production", cors_origins=("*",)).test_client()
    response = client.options("/cds-services", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Origin" in response.headers["Vary"]
