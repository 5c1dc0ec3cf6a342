"""Service settings, read from environment variables once at start-up.

Every variable is documented in README.md ("Configuration"). Defaults are safe for a single
clinic: SQLite in ./data, FHIR calls to loopback only, JWT verification required in production.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import SettingsError
from .urls import check_service_url

__all__ = ["PROJECT_ROOT", "Settings", "SettingsError"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name}: expected true/false, got {raw!r}")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.replace("\n", ",").split(",") if item.strip())


def _number(name: str, raw: str, kind: type = float, *, zero_allowed: bool = False) -> Any:
    try:
        value = kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from exc
    if value < 0 or (value == 0 and not zero_allowed):
        raise SettingsError(f"{name}: must be {'zero or more' if zero_allowed else 'positive'}, got {raw!r}")
    return value


DEFAULT_FHIR_ALLOWLIST = ("http://127.0.0.1", "http://localhost", "http://[::1]")


@dataclass(frozen=True)
class Settings:
    """All runtime configuration. Build with `Settings.from_env()` or directly in tests."""

    environment: str = "production"  # production | development
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    threads: int = 4  # per gunicorn worker: lets a worker compute while another request waits on FHIR
    # hook calls of a worker take turns computing (compute_gate.py); a call that waited this long goes
    # ahead anyway; 0 turns the gate off (the threads then share the interpreter lock as they come)
    gate_wait_ms: int = 50
    # ./data of the directory the service starts in (the repo for `make serve`): never inside the
    # installed package, which may be read-only; deployments set CDS_DATA_DIR or CDS_DATABASE_URL
    data_dir: Path = field(default_factory=lambda: Path.cwd() / "data")
    database_url: str | None = None  # None → sqlite:///<data_dir>/cds.sqlite3
    fhir_allowlist: tuple[str, ...] = DEFAULT_FHIR_ALLOWLIST
    allow_open_fhir_servers: bool = False  # call fhirServer when no fhirAuthorization is sent
    cors_origins: tuple[str, ...] = ()
    max_request_bytes: int = 5 * 1024 * 1024
    fhir_timeout_seconds: float = 3.0
    deadline_seconds: float = 8.0
    fhir_max_pages: int = 10
    fhir_max_response_bytes: int = 20 * 1024 * 1024
    on_missing_data: str = "412"  # 412 | partial
    site_config: Path | None = None
    cards_dir: Path = Path(__file__).resolve().parent / "data" / "cards"
    patient_hash_key: str | None = None
    log_level: str = "INFO"
    # served-card rows: "inline" (committed before the answer) or "background" (one writer thread per
    # process; faster on SQLite, but a crash loses queued rows and another instance may get feedback first)
    served_writes: str = "inline"
    # IANA zone whose calendar day is "today" for every rule (clinical-rules.md §1, rev 2)
    timezone: str = "UTC"
    # Client authentication (CDS client JWT, see README "Security")
    auth_mode: str | None = None  # off | optional | required; None → required in production, off in development
    issuers_file: Path | None = None
    public_base_url: str | None = None
    jwt_clock_skew_seconds: int = 60
    jwks_cache_seconds: int = 3600
    bench_floor: bool = False  # expose POST /_bench/floor (benchmarks only)
    auto_migrate: bool | None = None  # None → on in development; production runs `cds-service migrate`
    # Served cards and feedback older than this are removed by `cds-service purge` (None → 400 days)
    retention_days: int | None = None
    # Console for clinical informaticists
    console_enabled: bool | None = None  # None → on in development, off in production
    ops_token: str | None = None  # Bearer token for /metrics and /console/api/* (required in production)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'cds.sqlite3'}"

    @property
    def effective_auth_mode(self) -> str:
        if self.auth_mode:
            return self.auth_mode
        return "off" if self.environment == "development" else "required"

    @property
    def effective_auto_migrate(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.environment == "development"

    @property
    def effective_console_enabled(self) -> bool:
        if self.console_enabled is not None:
            return self.console_enabled
        return self.environment == "development"

    def now(self) -> datetime:
        """The current instant in the site's time zone: its date is "today" for every rule and tool."""
        return datetime.now(ZoneInfo(self.timezone))

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def validate(self) -> Settings:
        if self.environment not in {"production", "development"}:
            raise SettingsError(f"CDS_ENV: expected production or development, got {self.environment!r}")
        if self.served_writes not in {"inline", "background"}:
            raise SettingsError(f"CDS_SERVED_WRITES: expected inline or background, got {self.served_writes!r}")
        if self.on_missing_data not in {"412", "partial"}:
            raise SettingsError(f"CDS_ON_MISSING_DATA: expected 412 or partial, got {self.on_missing_data!r}")
        if self.auth_mode not in {None, "off", "optional", "required"}:
            raise SettingsError(f"CDS_AUTH_MODE: expected off, optional or required, got {self.auth_mode!r}")
        if self.fhir_timeout_seconds > self.deadline_seconds:
            raise SettingsError("CDS_FHIR_TIMEOUT must not exceed CDS_DEADLINE")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise SettingsError(f"CDS_TIMEZONE: not an IANA time zone name: {self.timezone!r}") from exc
        for prefix in self.fhir_allowlist:
            check_service_url(prefix, "CDS_FHIR_ALLOWLIST")

        return self

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        simple: dict[str, tuple[str, Any]] = {
            "CDS_ENV": ("environment", str),
            "CDS_HOST": ("host", str),
            "CDS_DATABASE_URL": ("database_url", str),
            "CDS_ON_MISSING_DATA": ("on_missing_data", str),
            "CDS_PATIENT_HASH_KEY": ("patient_hash_key", str),
            "CDS_LOG_LEVEL": ("log_level", str),
            "CDS_AUTH_MODE": ("auth_mode", str),
            "CDS_PUBLIC_BASE_URL": ("public_base_url", str),
            "CDS_OPS_TOKEN": ("ops_token", str),
            "CDS_TIMEZONE": ("timezone", str),
            "CDS_SERVED_WRITES": ("served_writes", str),
        }
        for var, (attr, kind) in simple.items():
            if env.get(var):
                values[attr] = kind(env[var])
        paths = {
            "CDS_DATA_DIR": "data_dir",
            "CDS_SITE_CONFIG": "site_config",
            "CDS_CARDS_DIR": "cards_dir",
            "CDS_ISSUERS_FILE": "issuers_file",
        }
        for var, attr in paths.items():
            if env.get(var):
                values[attr] = Path(env[var])
        numbers: dict[str, tuple[str, type]] = {
            "CDS_PORT": ("port", int),
            "CDS_WORKERS": ("workers", int),
            "CDS_THREADS": ("threads", int),
            "CDS_MAX_REQUEST_BYTES": ("max_request_bytes", int),
            "CDS_FHIR_TIMEOUT": ("fhir_timeout_seconds", float),
            "CDS_DEADLINE": ("deadline_seconds", float),
            "CDS_FHIR_MAX_PAGES": ("fhir_max_pages", int),
            "CDS_FHIR_MAX_RESPONSE_BYTES": ("fhir_max_response_bytes", int),
            "CDS_JWT_CLOCK_SKEW": ("jwt_clock_skew_seconds", int),
            "CDS_JWKS_CACHE_SECONDS": ("jwks_cache_seconds", int),
            "CDS_RETENTION_DAYS": ("retention_days", int),
        }
        for var, (attr, kind) in numbers.items():
            if env.get(var):
                values[attr] = _number(var, env[var], kind)
        if env.get("CDS_GATE_WAIT_MS"):  # 0 turns the gate off
            values["gate_wait_ms"] = _number("CDS_GATE_WAIT_MS", env["CDS_GATE_WAIT_MS"], int, zero_allowed=True)
        if env.get("CDS_FHIR_ALLOWLIST") is not None and "CDS_FHIR_ALLOWLIST" in env:
            values["fhir_allowlist"] = _list(env["CDS_FHIR_ALLOWLIST"])
        if env.get("CDS_CORS_ORIGINS"):
            values["cors_origins"] = _list(env["CDS_CORS_ORIGINS"])
        if env.get("CDS_ALLOW_OPEN_FHIR_SERVERS"):
            values["allow_open_fhir_servers"] = _bool("CDS_ALLOW_OPEN_FHIR_SERVERS", env["CDS_ALLOW_OPEN_FHIR_SERVERS"])
        if env.get("CDS_AUTO_MIGRATE"):
            values["auto_migrate"] = _bool("CDS_AUTO_MIGRATE", env["CDS_AUTO_MIGRATE"])
        if env.get("CDS_BENCH_FLOOR"):
            values["bench_floor"] = _bool("CDS_BENCH_FLOOR", env["CDS_BENCH_FLOOR"])
        if env.get("CDS_CONSOLE"):
            values["console_enabled"] = _bool("CDS_CONSOLE", env["CDS_CONSOLE"])
        return cls(**values).validate()
