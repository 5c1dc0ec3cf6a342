"""Profiles (pyinstrument) of the in-process request path: W1, W2 and the largest W3 payload.

    python bench/profile_inproc.py CASES.json LABEL     -> text on stdout

Like bench/inproc.py it imports nothing from ``bench`` so PYTHONPATH decides which tree is profiled.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    label = sys.argv[2]
    from pyinstrument import Profiler

    from cds_service.settings import Settings

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inproc import hook_caller  # a sibling script, not the bench package: PYTHONPATH picks the tree

    call = hook_caller(Settings(environment="production", auth_mode="off", data_dir=Path(spec["data_dir"]),
                                max_request_bytes=256 * 1024 * 1024, log_level="WARNING",
                                **({"auto_migrate": True} if "auto_migrate" in Settings.__dataclass_fields__ else {})))
    cases = spec["cases"]
    largest = max((c for c in cases if c["name"].startswith("W3")), key=lambda c: c["resources"] or 0, default=None)
    chosen = [c for c in cases if c["name"].startswith(("W1", "W2"))] + ([largest] if largest else [])
    out = [f"##### Profiles of the code under test: {label} ({Path(sys.modules['cds_service'].__file__).parent})"]
    for case in chosen:
        raw = Path(case["path"]).read_bytes()
        call(case["service_id"], raw, case["name"])
        budget = 3.0 if not case["name"].startswith("W3") else 6.0
        profiler = Profiler(interval=0.0005)
        reps = 0
        started = time.perf_counter()
        profiler.start()
        while reps < 2 or (time.perf_counter() - started < budget and reps < 300):
            call(case["service_id"], raw, case["name"])
            reps += 1
        profiler.stop()
        per = (time.perf_counter() - started) / reps * 1000
        out.append(f"\n=== {label}: {case['name']} ({case['resources']} resources, {len(raw)} bytes), "
                   f"{reps} requests, {per:.2f} ms per request under the profiler ===")
        out.append(profiler.output_text(unicode=False, color=False, show_all=False))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
