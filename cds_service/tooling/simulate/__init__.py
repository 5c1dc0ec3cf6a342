"""``cds-service simulate DIR``: the alert burden of the site's configuration on a population.

Reads a FHIR Bulk Data export (NDJSON per resource type), runs every patient through the hook engine
at a chosen evaluation date in parallel worker processes (progress bar on stderr), and writes the
per-topic rates per 1 000 patients, the distribution of card counts per patient and a chart: aggregates
only, nothing about any patient. See README "Population simulation".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

from .export import ExportError, read_export
from .report import Simulation
from .runner import run


def simulate(directory: Path | str, day: date, *, workers: int | None = None, progress: bool = True) -> Simulation:
    """Read the export and run it; the figures and the measured speed."""
    from cds_service.settings import Settings
    from cds_service.tooling.validation_report import evaluation_runtime

    settings = Settings.from_env()
    probe = evaluation_runtime(settings)  # fails here, once, on a bad site configuration
    rollout = dict(probe.governance.rollout)
    probe.close()
    population = read_export(directory)
    workers = max(1, min(workers or os.cpu_count() or 1, max(1, len(population.patients))))
    started = time.perf_counter()
    tally = run(list(population.patients.values()), day, workers=workers, settings=settings, progress=progress)
    return Simulation(tally, day, time.perf_counter() - started, workers, rollout)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export", type=Path, help="folder of a FHIR Bulk Data export (*.ndjson per resource type)")
    parser.add_argument("--on", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="evaluation date (default: today in CDS_TIMEZONE)")
    parser.add_argument("--workers", type=int, help="worker processes (default: every core)")
    parser.add_argument("--out", type=Path, default=Path("simulation"),
                        help="folder for simulation.json, simulation.txt and simulation.svg (default ./simulation)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def command(args: argparse.Namespace) -> int:
    from cds_service.settings import Settings

    day = args.on or Settings.from_env().now().date()
    try:
        result = simulate(args.export, day, workers=args.workers, progress=not args.no_progress)
    except ExportError as exc:
        print(f"cds-service simulate: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "simulation.json").write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
    (args.out / "simulation.txt").write_text(result.to_text(), encoding="utf-8")
    (args.out / "simulation.svg").write_text(result.to_svg(), encoding="utf-8")
    sys.stdout.write(result.to_text())
    print(f"wrote {args.out}/simulation.json, simulation.txt, simulation.svg", file=sys.stderr)
    return 0
