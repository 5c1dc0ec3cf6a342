"""`cds-service` command line: serve, evaluate, services, validate, sandbox, report."""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    from .server import run_gunicorn

    return run_gunicorn(settings)


def _evaluate(args: argparse.Namespace) -> int:
    """Run one CDS Hooks request through the same Flask code path as HTTP and print the response."""
    from .app import create_app

    body = json.loads(Path(args.request).read_text("utf-8"))
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
    settings = settings.with_overrides(auth_mode="off")
    app = create_app(settings)
    service = args.service or _service_for_hook(app, body.get("hook"))
    response = app.test_client().post(f"/cds-services/{service}", json=body)
    print(json.dumps(response.get_json(), indent=2))
    return 0 if response.status_code == 200 else 1


def _service_for_hook(app, hook: str | None) -> str:
    for service in app.extensions["cds"].services.values():
        if service.hook == hook:
            return service.id
    raise SystemExit(f"no service handles hook {hook!r}; pass --service")


def _services(_args: argparse.Namespace) -> int:
    from .app import create_app

    app = create_app(Settings.from_env().with_overrides(auth_mode="off"))
    print(json.dumps(app.test_client().get("/cds-services").get_json(), indent=2))
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    return int(importlib.import_module(module).main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = {
        "validate": "cds_service.validation_report",
        "sandbox": "cds_service.sandbox",
        "report": "cds_service.analytics",
    }
    if argv and argv[0] in delegated:
        return _delegate(delegated[argv[0]], argv[1:])

    parser = argparse.ArgumentParser(prog="cds-service", description="Low back pain CDS Hooks service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (gunicorn; --dev for Flask's server)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="gunicorn workers (default: number of cores)")
    serve.add_argument("--dev", action="store_true", help="Flask development server (single process)")
    serve.set_defaults(func=_serve)
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
    sub.add_parser("validate", help="run every fixture through every hook (see README)")
    sub.add_parser("sandbox", help="start a sandbox FHIR server loaded with the fixtures")
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
