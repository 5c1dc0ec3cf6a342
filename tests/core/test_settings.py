"""Settings come from environment variables; bad values fail at start-up with the variable named."""

import pytest

from cds_service.settings import Settings, SettingsError


def test_defaults_are_safe():
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1"
    assert settings.effective_database_url.startswith("sqlite:///")
    assert all("127.0.0.1" in p or "localhost" in p or "[::1]" in p for p in settings.fhir_allowlist)
    assert settings.effective_auth_mode == "required"
    assert settings.effective_console_enabled is False
    assert settings.cors_origins == ()


def test_environment_variables_are_read():
    settings = Settings.from_env({
        "CDS_PORT": "9000", "CDS_FHIR_ALLOWLIST": "https://a.example/fhir, https://b.example/fhir",
        "CDS_CORS_ORIGINS": "https://sandbox.cds-hooks.org", "CDS_DEADLINE": "5", "CDS_FHIR_TIMEOUT": "2.5",
        "CDS_MAX_REQUEST_BYTES": "1000", "CDS_DATABASE_URL": "postgresql+psycopg://u@h/db", "CDS_ENV": "development",
    })
    assert settings.port == 9000
    assert settings.fhir_allowlist == ("https://a.example/fhir", "https://b.example/fhir")
    assert settings.cors_origins == ("https://sandbox.cds-hooks.org",)
    assert settings.deadline_seconds == 5.0 and settings.fhir_timeout_seconds == 2.5
    assert settings.effective_database_url == "postgresql+psycopg://u@h/db"
    assert settings.effective_auth_mode == "off"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CDS_PORT": "eighty"}, "CDS_PORT"),
        ({"CDS_DEADLINE": "-1"}, "CDS_DEADLINE"),
        ({"CDS_ENV": "staging"}, "CDS_ENV"),
        ({"CDS_FHIR_ALLOWLIST": "ehr.example.org"}, "CDS_FHIR_ALLOWLIST"),
        ({"CDS_FHIR_ALLOWLIST": "http://ehr.example.org/fhir"}, "CDS_FHIR_ALLOWLIST"),
        ({"CDS_FHIR_TIMEOUT": "9", "CDS_DEADLINE": "3"}, "CDS_FHIR_TIMEOUT"),
        ({"CDS_CONSOLE": "maybe"}, "CDS_CONSOLE"),
        ({"CDS_AUTH_MODE": "sometimes"}, "CDS_AUTH_MODE"),
        ({"CDS_GATE_WAIT_MS": "-1"}, "CDS_GATE_WAIT_MS"),
        ({"CDS_GATE_WAIT_MS": "soon"}, "CDS_GATE_WAIT_MS"),
        ({"CDS_THREADS": "0"}, "CDS_THREADS"),
    ],
)
def test_invalid_values_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), (" 0 ", 0), ("00", 0), ("75", 75)])
def test_the_compute_gate_wait_may_be_zero(raw, expected):
    assert Settings.from_env({"CDS_GATE_WAIT_MS": raw}).gate_wait_ms == expected
