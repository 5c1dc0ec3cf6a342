"""Start sekmet-fhir 0.1.1 as a sandbox FHIR R4 server for the CDS service.

Runs INSIDE sekmet's own virtual environment (.sandbox/sekmet-venv/bin/python), never in the
project's .venv. cds_service/tooling/sandbox.py starts it; by hand:

    .sandbox/sekmet-venv/bin/python sandbox/sekmet/launch.py --port 8090 --token sandbox-token

Configuration (no settings.yaml is read):
  * in-memory SQLite (db_path ":memory:"): every start is empty,
  * host 127.0.0.1, FHIR base http://127.0.0.1:<port>/fhir,
  * simulator off (it would answer ServiceRequests, MedicationRequests... with new resources),
  * inbound traffic logging off,
  * bearer-token authentication with one static token (GET /fhir/metadata stays open, as in sekmet).

Known gaps of 0.1.1 patched here, before the app is built (the indexer reads the table at write
time, so this must happen before any resource is stored): its search-parameter table
`sekmet.fhir.search_params.PARAMS` has no entry at all for FamilyMemberHistory and
QuestionnaireResponse, so `FamilyMemberHistory?patient=X` ignored `patient` (with a warning in the
Bundle) and answered every patient's resources. EXTRA_PARAMS below registers them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from importlib.metadata import version

EXPECTED_VERSION = "0.1.1"

# resource type -> [(name, kind, element paths, reference target)]: the format of
# sekmet.fhir.search_params (kinds: string | token | reference | date | number | uri).
EXTRA_PARAMS: dict[str, list[tuple[str, str, tuple[str, ...], str | None]]] = {
    "FamilyMemberHistory": [
        ("patient", "reference", ("patient",), "Patient"),
        ("relationship", "token", ("relationship",), None),
        ("code", "token", ("condition.code",), None),
        ("status", "token", ("status",), None),
        ("date", "date", ("date",), None),
    ],
    "QuestionnaireResponse": [
        ("patient", "reference", ("subject",), "Patient"),
        ("subject", "reference", ("subject",), None),
        # `questionnaire` is a canonical (a plain string, not a Reference object): sekmet's
        # reference indexer only reads Reference.reference, so index it as a uri (exact match).
        ("questionnaire", "uri", ("questionnaire",), None),
        ("status", "token", ("status",), None),
        ("authored", "date", ("authored",), None),
    ],
}


def patch_search_params() -> list[str]:
    """Register EXTRA_PARAMS in sekmet's table; returns 'Type.name' for each one added."""
    from sekmet.fhir import search_params

    added = []
    for rtype, params in EXTRA_PARAMS.items():
        table = search_params.PARAMS.setdefault(rtype, {})
        for name, kind, paths, target in params:
            if name in table:
                continue  # a later sekmet defines it itself: keep its definition
            table[name] = search_params.SearchParam(name, kind, paths, target)
            added.append(f"{rtype}.{name}")
    return added


def build_settings(host: str, port: int, token: str, data_dir: str, validation: str):
    from sekmet.config import ServerAuth, Settings, SimulatorSettings, ValidationSettings

    return Settings(
        base_url=f"http://{host}:{port}/fhir",
        host=host,
        port=port,
        data_dir=data_dir,
        db_path=":memory:",
        simulator=SimulatorSettings(enabled=False),
        log_inbound=False,
        server_auth=ServerAuth(types=["bearer"], tokens=[token]),
        validation=ValidationSettings(inbound=validation),
        own_private_key_path=os.path.join(data_dir, "keys", "sekmet_private.pem"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--token",
        default=os.environ.get("SEKMET_SANDBOX_TOKEN", ""),
        help="static bearer token (or SEKMET_SANDBOX_TOKEN)",
    )
    parser.add_argument("--data-dir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument(
        "--validation",
        choices=("strict", "warn", "off"),
        default="strict",
        help="sekmet's structural validation of written resources (default strict)",
    )
    parser.add_argument("--verbose", action="store_true", help="sekmet's INFO logs and uvicorn's access log")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a bearer token is required (--token or SEKMET_SANDBOX_TOKEN)")

    installed = version("sekmet-fhir")
    if installed != EXPECTED_VERSION:
        print(
            f"launch.py: sekmet-fhir {installed} is installed, the patches target {EXPECTED_VERSION}; "
            "re-run `make sandbox-deps`",
            file=sys.stderr,
        )
        return 2

    import uvicorn
    from sekmet.config import set_settings
    from sekmet.main import create_app

    added = patch_search_params()
    with tempfile.TemporaryDirectory(prefix="sekmet-sandbox-") as scratch:
        data_dir = args.data_dir or scratch
        settings = build_settings(args.host, args.port, args.token, data_dir, args.validation)
        set_settings(settings)
        app = create_app(settings)
        if not args.verbose:  # create_app configures INFO logging
            logging.getLogger().setLevel(logging.WARNING)
        print(
            f"sekmet-fhir {installed} (in-memory SQLite) starting on {settings.base_url}; "
            f"search parameters added: {', '.join(added) or 'none'}",
            flush=True,
        )
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="info" if args.verbose else "warning",
            access_log=args.verbose,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
