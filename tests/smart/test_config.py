"""When the app is served and with which secret (several workers must read each other's cookies)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from cds_service.app import create_app
from cds_service.settings import Settings
from cds_service.smart.blueprint import init_app


def app_for(data_dir: Path, **overrides: object) -> Flask:
    values = {"environment": "development", "data_dir": data_dir, "log_level": "WARNING", "console_enabled": False}
    values.update(overrides)
    app = create_app(Settings(**values).validate())  # type: ignore[arg-type]
    app.extensions["cds"].fhir.close()
    return app


def test_development_workers_share_one_secret(tmp_path: Path) -> None:
    first, second = app_for(tmp_path), app_for(tmp_path)
    sealed = first.extensions["cds_smart"].sealer.seal({"k": 1})
    assert second.extensions["cds_smart"].sealer.unseal(sealed, 60) == {"k": 1}
    assert (tmp_path / "smart-secret.key").stat().st_mode & 0o777 == 0o600
    other = app_for(tmp_path / "elsewhere")
    assert other.extensions["cds_smart"].sealer.unseal(sealed, 60) is None


def test_production_serves_the_app_only_with_a_configured_secret(tmp_path: Path) -> None:
    settings = Settings(environment="production", data_dir=tmp_path, auth_mode="off", log_level="WARNING").validate()
    without = Flask("without")
    without.extensions["cds"] = app_for(tmp_path).extensions["cds"]
    init_app(without, settings, environ={})
    assert "cds_smart" not in without.extensions and "smart" not in without.blueprints
    with_secret = Flask("with")
    with_secret.extensions["cds"] = without.extensions["cds"]
    init_app(with_secret, settings, environ={"CDS_SMART_SECRET_KEY": "s" * 32, "CDS_SMART_CLIENT_ID": "site-app"})
    assert with_secret.extensions["cds_smart"].client_id == "site-app" and "smart" in with_secret.blueprints


def test_issuers_file_fhir_allowlists_admit_their_ehrs(tmp_path: Path) -> None:
    from cds_service.urls import url_allowed

    issuers = tmp_path / "issuers.yaml"
    issuers.write_text(
        "issuers:\n"
        "  - iss: https://ehr.example.org\n"
        "    jku_allowlist: [https://ehr.example.org/jwks.json]\n"
        "    fhir_allowlist: [https://ehr.example.org/fhir]\n"
    )
    app = app_for(tmp_path, issuers_file=issuers, auth_mode="optional")  # issuers are read when auth is on
    allowlist = app.extensions["cds_smart"].allowlist
    assert url_allowed("https://ehr.example.org/fhir", allowlist)
    assert url_allowed("http://127.0.0.1:9999/fhir", allowlist)  # the global list still counts
    assert not url_allowed("https://ehr.example.org.evil.example/fhir", allowlist)
