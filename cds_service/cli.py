"""`cds-service` command line: every subcommand is registered here.

serve, migrate, evaluate, services, validate, sandbox, fixtures, report. Tools that answer hooks
(evaluate, services, validate) use the hook engine directly, with no database and no HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    overrides = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.workers:
        overrides["workers"] = args.workers
    settings = settings.with_overrides(**overrides).validate()
    if args.dev:
        from .app import create_app

        create_app(settings).run(host=settings.host, port=settings.port, debug=False, threaded=True)
        return 0
    _refuse_unmigrated(settings)
    from .server import run_gunicorn

    return run_gunicorn(settings)


def _refuse_unmigrated(settings: Settings) -> None:
    """Production without auto-migration: stop before forking workers when the schema is behind
    (raises SchemaNotMigrated, a SettingsError naming `cds-service migrate`). Each worker checks too."""
    if settings.environment != "production" or settings.effective_auto_migrate:
        return
    from .store import Store

    store = Store(settings.effective_database_url, auto_migrate=False)
    try:
        store.require_migrated()
    finally:
        store.engine.dispose()


def _migrate(args: argparse.Namespace) -> int:
    """Bring the database schema to the latest revision (Alembic) under the migration lock.

    Safe to run from several hosts at once and idempotent: one process upgrades, the others wait for
    the lock and find nothing to do. Exit status: 0 done (or already current), 1 database unreachable
    or migration failed, 3 with --check when the schema is behind.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from . import migrations
    from .store import Store

    url = args.database_url or Settings.from_env().effective_database_url
    shown = _safe_url(url)
    if args.sql:
        migrations.offline_sql(url, sys.stdout)
        return 0
    store = Store(url)
    try:
        if args.check:
            state = migrations.schema_state(store.engine)
            print(f"{shown}: schema {state.status} (revision {state.current or 'none'}, this release {state.head})")
            return 0 if state.usable else 3
        before, after = migrations.upgrade(store.engine, timeout=args.timeout)
    except SQLAlchemyError as exc:
        print(f"cds-service migrate: database unavailable at {shown} ({type(exc).__name__})", file=sys.stderr)
        return 1
    except migrations.MigrationError as exc:
        print(f"cds-service migrate: {exc}", file=sys.stderr)
        return 1
    finally:
        store.engine.dispose()
    if before == after:
        print(f"{shown}: schema already at revision {after}; nothing to do")
    else:
        print(f"{shown}: schema upgraded from {before or 'none'} to {after}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    """Delete served cards and feedback older than the retention, keeping daily counts (retention.py)."""
    from sqlalchemy.exc import SQLAlchemyError

    from . import migrations, retention
    from .store import Store

    settings = Settings.from_env()
    days = args.days if args.days is not None else settings.retention_days or retention.DEFAULT_RETENTION_DAYS
    if days < 1:
        print("cds-service purge: --days must be at least 1", file=sys.stderr)
        return 2
    url = args.database_url or settings.effective_database_url
    store = Store(url, auto_migrate=False)
    try:
        if not migrations.schema_state(store.engine).usable:
            print("cds-service purge: the database schema is not migrated; run `cds-service migrate`",
                  file=sys.stderr)
            return 1
        result = retention.purge(store.engine, days)
    except SQLAlchemyError as exc:
        print(f"cds-service purge: database unavailable at {_safe_url(url)} ({type(exc).__name__})",
              file=sys.stderr)
        return 1
    finally:
        store.engine.dispose()
    print(result.summary())
    return 0


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by the engine itself
        return "the database"


def _evaluate(args: argparse.Namespace) -> int:
    """Run one CDS Hooks request through the hook engine and print the answer (nothing recorded)."""
    from .logging_setup import configure_logging
    from .protocol import RequestError
    from .runtime import Runtime

    body = json.loads(Path(args.request).read_text("utf-8"))
    if not isinstance(body, dict):
        print("cds-service evaluate: the request file must hold a JSON object", file=sys.stderr)
        return 2
    if args.fhir_server:
        body["fhirServer"] = args.fhir_server
    if args.token:
        body["fhirAuthorization"] = {
            "access_token": args.token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "cds-service-cli",
        }
    settings = Settings.from_env()
    if args.fhir_server and not args.keep_allowlist:
        settings = settings.with_overrides(fhir_allowlist=(*settings.fhir_allowlist, args.fhir_server))
    # stdout carries the answer only; warnings go to stderr. No database: an evaluation is not analytics.
    configure_logging("WARNING")
    runtime = Runtime.build(settings.with_overrides(auth_mode="off"), with_store=False)
    try:
        engine = runtime.engine
        service = engine.service(args.service) if args.service else engine.service_for_hook(body.get("hook"))
        outcome = engine.invoke(service.id, body, record=False)
        status, answer = outcome.status, outcome.body
    except RequestError as exc:
        status, answer = exc.status, exc.body()
    finally:
        runtime.close()
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0 if status == 200 else 1


def _services(_args: argparse.Namespace) -> int:
    from .runtime import Runtime

    runtime = Runtime.build(Settings.from_env().with_overrides(auth_mode="off"), with_store=False)
    try:
        print(json.dumps(runtime.engine.discovery(), indent=2, ensure_ascii=False))
    finally:
        runtime.close()
    return 0


def _tool(module: str, description: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
    """A subcommand implemented by a tooling module: its configure(parser) and command(args), imported late."""
    import importlib

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.description = description
        importlib.import_module(module).configure(parser)

    def command(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).command(args) or 0)

    return configure, command


# Subcommands whose options live with the code they drive (the parser is still built here, once).
TOOLS = {
    "validate": ("cds_service.tooling.validation_report",
                 "run every fixture patient through every hook and compare the cards with the manifest"),
    "sandbox": ("cds_service.tooling.sandbox", "start a sandbox FHIR server loaded with the fixtures"),
    "fixtures": ("cds_service.tooling.fixtures", "fixture tooling: regenerate the example CDS Hooks requests"),
    "simulate": ("cds_service.tooling.simulate",
                 "alert burden of the site configuration on a FHIR Bulk Data export (per-topic rates per 1 000 "
                 "patients, card counts, chart)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":  # options owned by cds_service.analytics
        from .analytics import main as report_main

        return int(report_main(argv[1:]) or 0)

    parser = argparse.ArgumentParser(prog="cds-service", description="Low back pain CDS Hooks service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (gunicorn; --dev for Flask's server)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="gunicorn workers (default: number of cores)")
    serve.add_argument("--dev", action="store_true", help="Flask development server (single process)")
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser(
        "migrate",
        help="upgrade the database schema to the latest revision (safe from several instances at once)",
    )
    migrate.add_argument("--database-url", help="SQLAlchemy URL (default: CDS_DATABASE_URL / CDS_DATA_DIR)")
    migrate.add_argument("--check", action="store_true",
                         help="only report the schema revision; exit 3 when it is behind this release")
    migrate.add_argument("--sql", action="store_true",
                         help="print the SQL of a full upgrade for the URL's dialect instead of running it")
    migrate.add_argument("--timeout", type=float, default=120.0,
                         help="seconds to wait for another process's migration lock (default 120)")
    migrate.set_defaults(func=_migrate)
    purge = sub.add_parser("purge", help="delete served cards and feedback older than the retention period, "
                           "keeping daily counts for analytics (safe while instances serve)")
    purge.add_argument("--days", type=int, help="keep this many days (default: CDS_RETENTION_DAYS, else 400)")
    purge.add_argument("--database-url", help="SQLAlchemy URL (default: CDS_DATABASE_URL / CDS_DATA_DIR)")
    purge.set_defaults(func=_purge)
    evaluate = sub.add_parser("evaluate", help="evaluate one CDS Hooks request JSON file and print the response")
    evaluate.add_argument("request")
    evaluate.add_argument("--service", help="service id (default: the service for the request's hook)")
    evaluate.add_argument("--fhir-server", help="FHIR base URL to fetch what prefetch lacks")
    evaluate.add_argument("--token", help="bearer token for the FHIR server")
    evaluate.add_argument("--keep-allowlist", action="store_true",
                          help="do not add --fhir-server to the FHIR allowlist for this run")
    evaluate.set_defaults(func=_evaluate)
    services = sub.add_parser("services", help="print the discovery document")
    services.set_defaults(func=_services)
    for name, (module, description) in TOOLS.items():
        configure, command = _tool(module, description)
        tool = sub.add_parser(name, help=description)
        if argv[:1] == [name]:  # import a tool's module only when it runs (serve stays light)
            configure(tool)
        tool.set_defaults(func=command)
    sub.add_parser("report", help="feedback analytics: served, accepted, overridden per topic")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
