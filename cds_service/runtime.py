"""Everything built once per worker at start-up: knowledge, registry, card catalog, store, clients, engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth import Authenticator, SqlReplayCache
from .cards import CardCatalog
from .clinical.knowledge import Knowledge
from .engine import HookEngine
from .fhir_client import FhirClient
from .protocol import fast_validators, validators
from .registry import ServiceDefinition, build_registry
from .rollout import Governance
from .rollout import load as load_governance
from .settings import Settings, SettingsError
from .store import Store


@dataclass
class Runtime:
    settings: Settings
    knowledge: Knowledge
    services: dict[str, ServiceDefinition]
    catalog: CardCatalog
    store: Store | None  # None: an evaluation-only process (cds-service evaluate) records nothing
    fhir: FhirClient
    authenticator: Authenticator | None
    governance: Governance = field(default_factory=Governance)  # per-topic rollout, suppression (rollout.py)
    engine: HookEngine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.engine = HookEngine(self)

    @classmethod
    def build(cls, settings: Settings, *, with_store: bool = True) -> Runtime:
        """The service's runtime; ``with_store=False`` for tools that evaluate but never record or authenticate."""
        auth_on = settings.effective_auth_mode != "off"
        if with_store and settings.environment == "production" and auth_on and not settings.public_base_url:
            raise SettingsError(
                "CDS_PUBLIC_BASE_URL is required in production when client authentication is on: the JWT `aud` "
                "must be checked against the URL clients call, not against the request's Host header"
            )
        validators()  # compile the JSON Schemas now, not on the first hook request
        fast_validators()
        knowledge = Knowledge.load(settings.site_config)
        store: Store | None = None
        authenticator: Authenticator | None = None
        if with_store:
            store = Store(
                settings.effective_database_url, settings.patient_hash_key, auto_migrate=settings.effective_auto_migrate
            )
            replay_cache = SqlReplayCache(store.engine, ensure_schema=store.ensure_schema)
            # A database that is down at start-up must not stop hooks from being answered:
            # the store retries schema creation on first use and /readyz reports not-ready meanwhile.
            if settings.environment == "production" and not settings.effective_auto_migrate:
                store.require_migrated()  # refuse to start on a schema `cds-service migrate` has not brought up
            store.create_schema()  # jwt_replay is part of the schema (cds_service.tables)
            authenticator = Authenticator(settings, replay_cache)
        catalog = CardCatalog.load(settings.cards_dir, site_config=settings.site_config)
        reasons = {topic: [r["code"] for r in card.override_reasons] for topic, card in catalog.cards.items()}
        governance = load_governance(settings.site_config, reasons, patient_hash_key=settings.patient_hash_key)
        return cls(
            settings=settings,
            knowledge=knowledge,
            services=build_registry(knowledge),
            catalog=catalog,
            governance=governance,
            store=store,
            fhir=FhirClient(
                timeout=settings.fhir_timeout_seconds,
                max_pages=settings.fhir_max_pages,
                max_response_bytes=settings.fhir_max_response_bytes,
            ),
            authenticator=authenticator,
        )

    def close(self) -> None:
        """Write queued served-card rows, then release pooled connections (FHIR sessions, database pool)."""
        self.engine.close()
        self.fhir.close()
        if self.authenticator is not None:
            self.authenticator.close()  # background JWKS fetch threads
        if self.store is not None:
            self.store.engine.dispose()
