"""The trusted-issuer registry (``CDS_ISSUERS_FILE``): which CDS clients may call, and where their keys are.

Trust is configured, never discovered: an ``iss`` is trusted only when it is listed here, and every
entry is checked at start-up so a typo stops the service instead of silently disabling a key source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cds_service.settings import SettingsError
from cds_service.urls import check_service_url

from .jwks import parse_jwks
from .model import MAX_ISS_CHARS


@dataclass(frozen=True)
class TrustedIssuer:
    """One entry of the issuers file: how to recognise and verify tokens from one CDS client."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jku_allowlist: tuple[str, ...] = ()
    tenant: str | None = None
    fhir_allowlist: tuple[str, ...] | None = None



_ISSUER_FIELDS = {"iss", "jwks_url", "jwks_file", "jku_allowlist", "tenant", "fhir_allowlist"}


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise SettingsError(f"{what}: expected a list of URL strings")
    return tuple(item.strip() for item in value)


def load_issuers(path: Path) -> dict[str, TrustedIssuer]:
    """Read and validate the trusted-issuer registry (YAML; JSON is valid YAML and accepted too).

    Format (see docs/security.md)::

        issuers:
          - iss: https://sandbox.cds-hooks.org
            jwks_file: sandbox-jwks.json          # relative to this file; or jwks_url: https://...
            jku_allowlist: [https://sandbox.cds-hooks.org/.well-known/jwks.json]
            tenant: sandbox                        # optional
            fhir_allowlist: [https://launch.smarthealthit.org/v/r4/fhir]   # optional

    Everything is checked here, at start-up: unknown fields (a typo such as ``jwks_uri`` must not
    silently disable a key source), duplicate issuers, non-https URLs, unreadable JWKS files.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"CDS_ISSUERS_FILE: cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("issuers"), list):
        raise SettingsError(f"CDS_ISSUERS_FILE {path}: expected a mapping with an 'issuers' list")
    issuers: dict[str, TrustedIssuer] = {}
    for index, entry in enumerate(raw["issuers"]):
        where = f"CDS_ISSUERS_FILE {path.name} issuers[{index}]"
        if not isinstance(entry, dict):
            raise SettingsError(f"{where}: expected a mapping")
        unknown = set(entry) - _ISSUER_FIELDS
        if unknown:
            raise SettingsError(
                f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_ISSUER_FIELDS)}"
            )
        iss = entry.get("iss")
        if not isinstance(iss, str) or not iss.strip() or len(iss) > MAX_ISS_CHARS:
            raise SettingsError(f"{where}: 'iss' must be a non-empty string of at most {MAX_ISS_CHARS} chars")
        if iss in issuers:
            raise SettingsError(f"{where}: issuer {iss!r} is listed twice")
        jwks_url = entry.get("jwks_url")
        jwks_file_raw = entry.get("jwks_file")
        if jwks_url is not None and jwks_file_raw is not None:
            raise SettingsError(f"{where}: give jwks_url or jwks_file, not both")
        if jwks_url is not None:
            if not isinstance(jwks_url, str):
                raise SettingsError(f"{where}: jwks_url must be a string")
            check_service_url(jwks_url, f"{where} jwks_url")
        jwks_file: Path | None = None
        if jwks_file_raw is not None:
            if not isinstance(jwks_file_raw, str):
                raise SettingsError(f"{where}: jwks_file must be a path string")
            jwks_file = Path(jwks_file_raw)
            if not jwks_file.is_absolute():
                jwks_file = (path.parent / jwks_file).resolve()
            try:
                parse_jwks(jwks_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise SettingsError(f"{where}: jwks_file {jwks_file} is not a usable JWKS: {exc}") from exc
        jku_allowlist: tuple[str, ...] = ()
        if entry.get("jku_allowlist") is not None:
            jku_allowlist = _string_list(entry["jku_allowlist"], f"{where} jku_allowlist")
            for prefix in jku_allowlist:
                check_service_url(prefix, f"{where} jku_allowlist")
        if jwks_url is None and jwks_file is None and not jku_allowlist:
            raise SettingsError(f"{where}: needs jwks_url, jwks_file or jku_allowlist to find keys")
        tenant = entry.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
            raise SettingsError(f"{where}: tenant must be a non-empty string")
        fhir_allowlist: tuple[str, ...] | None = None
        if entry.get("fhir_allowlist") is not None:
            fhir_allowlist = _string_list(entry["fhir_allowlist"], f"{where} fhir_allowlist")
            for prefix in fhir_allowlist:
                check_service_url(prefix, f"{where} fhir_allowlist")
        issuers[iss] = TrustedIssuer(
            iss=iss,
            jwks_url=jwks_url,
            jwks_file=jwks_file,
            jku_allowlist=jku_allowlist,
            tenant=tenant,
            fhir_allowlist=fhir_allowlist,
        )
    return issuers

