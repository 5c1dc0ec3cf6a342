"""``cds-service report``: the analytics of /console/analytics in a terminal, as JSON or as CSV."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from .model import Period, PeriodError, Report
from .queries import build_report, topic_displays


def main(argv: Sequence[str] | None = None) -> int:
    """``cds-service report --since DATE [--until DATE] [--service ID] [--csv FILE] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="cds-service report",
        description="Alert burden and feedback per topic and service: presentations shown, silent "
        "(would have been shown), suppressed, accepted, overridden, with override reasons, comments and the "
        "weekly trend (the figures of /console/analytics).",
    )
    parser.add_argument("--since", required=True, help="first day, YYYY-MM-DD (UTC, inclusive)")
    parser.add_argument("--until", help="last day, YYYY-MM-DD (UTC, inclusive; default today)")
    parser.add_argument("--service", help="only this service id")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write one CSV row per service and topic")
    parser.add_argument("--json", action="store_true", help="print the JSON of /console/api/analytics instead")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: CDS_DATABASE_URL / CDS_DATA_DIR)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    from ..settings import Settings, SettingsError
    from ..store import Store

    try:
        period = Period.parse(args.since, args.until)
        settings = Settings.from_env()
    except (PeriodError, SettingsError) as exc:
        print(f"cds-service report: {exc}", file=sys.stderr)
        return 2
    url = args.database_url or settings.effective_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        # do not create an empty database just to report on it
        report = Report(period, args.service, [], period.week_buckets(), {}, [], 0, database_ready=False)
        return _print(report, args)
    from .. import migrations

    store = Store(url, auto_migrate=False)
    try:
        state = migrations.schema_state(store.engine)
        if state.status == "behind":
            print(f"cds-service report: the database schema is at {state.current}, this release reads "
                  f"{state.head}: run `cds-service migrate`", file=sys.stderr)
            return 1
        report = build_report(store.engine, period, args.service, topic_displays(settings.cards_dir))
    except SQLAlchemyError as exc:
        print(f"cds-service report: database unavailable ({type(exc).__name__})", file=sys.stderr)
        return 1
    finally:
        store.engine.dispose()
    return _print(report, args)


def _print(report: Report, args: argparse.Namespace) -> int:
    if args.json:
        # JSON escapes every control character (ensure_ascii keeps ESC as \u001b, not a raw byte)
        print(json.dumps(report.as_json(), indent=2, ensure_ascii=True))
    else:
        sys.stdout.write(report.to_text())
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(report.to_csv(), encoding="utf-8")
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0
