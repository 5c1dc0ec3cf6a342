"""What ``cds-service simulate`` writes: per-topic rates per 1 000 patients, the distribution of card
counts per patient, and a chart (SVG). Aggregates only: no patient identifier, no resource content."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from xml.sax.saxutils import escape

from .runner import Tally


@dataclass
class Simulation:
    tally: Tally
    evaluated_on: date
    seconds: float
    workers: int
    rollout: dict[str, str]

    @property
    def patients_per_second(self) -> float:
        return self.tally.patients / self.seconds if self.seconds > 0 else 0.0

    @property
    def patients_per_second_per_core(self) -> float:
        return self.patients_per_second / self.workers

    @property
    def patients_per_cpu_second(self) -> float:
        """Patients per second of one fully available core: insensitive to other load on the machine."""
        return self.tally.patients / self.tally.cpu_seconds if self.tally.cpu_seconds > 0 else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One row per hook and topic that fired (shown or silent)."""
        n = self.tally.patients
        keys = sorted(set(self.tally.shown) | set(self.tally.silent))
        return [
            {
                "hook": hook,
                "topic": topic,
                "mode": self.rollout.get(topic, "active"),
                "cards": self.tally.shown[(hook, topic)],
                "perThousandPatients": _per_thousand(self.tally.shown[(hook, topic)], n),
                "silentWouldHaveShown": self.tally.silent[(hook, topic)],
                "silentPerThousandPatients": _per_thousand(self.tally.silent[(hook, topic)], n),
            }
            for hook, topic in keys
        ]

    def as_json(self) -> dict[str, Any]:
        t = self.tally
        return {
            "evaluatedOn": self.evaluated_on.isoformat(),
            "patients": t.patients,
            "lumbarImagingOrders": t.orders,
            "topics": self.rows(),
            "patientsWithTopicPerThousand": {
                k: _per_thousand(v, t.patients) for k, v in sorted(t.patients_with.items())},
            "cardsPerPatient": {str(k): v for k, v in sorted(t.cards_per_patient.items())},
            "errors": dict(sorted(t.errors.items())),
            "speed": {"seconds": round(self.seconds, 2), "workers": self.workers,
                      "patientsPerSecond": round(self.patients_per_second, 1),
                      "patientsPerSecondPerCore": round(self.patients_per_second_per_core, 1),
                      "workerCpuSeconds": round(self.tally.cpu_seconds, 2),
                      "patientsPerCpuSecond": round(self.patients_per_cpu_second, 1)},
        }

    def to_text(self) -> str:
        t = self.tally
        lines = [f"Population simulation: {t.patients} patients, {t.orders} lumbar imaging orders, "
                 f"evaluated on {self.evaluated_on}", ""]
        header = ("hook", "topic", "mode", "cards", "per 1000", "silent", "silent per 1000")
        rows = [(r["hook"], r["topic"], r["mode"], str(r["cards"]), f"{r['perThousandPatients']:.1f}",
                 str(r["silentWouldHaveShown"]), f"{r['silentPerThousandPatients']:.1f}") for r in self.rows()]
        lines += _table(header, rows, 3) if rows else ["  (no card fired)"]
        lines += ["", "Cards shown per patient (all hooks)"]
        counts = [(str(k), str(v), f"{100 * v / t.patients:.1f}") for k, v in sorted(t.cards_per_patient.items())]
        lines += _table(("cards", "patients", "share %"), counts, 0) if t.patients else ["  (no patients)"]
        if t.errors:
            lines += ["", "Calls that gave no answer: " + ", ".join(f"{k} {v}" for k, v in sorted(t.errors.items()))]
        lines += ["", f"Speed: {t.patients} patients in {self.seconds:.1f} s with {self.workers} worker(s): "
                  f"{self.patients_per_second:.1f} patients/s, "
                  f"{self.patients_per_second_per_core:.1f} patients/s/core; "
                  f"{self.tally.cpu_seconds:.1f} s of worker CPU: {self.patients_per_cpu_second:.1f} patients per "
                  "CPU-second (a core to itself)"]
        return "\n".join(lines) + "\n"

    def to_svg(self) -> str:
        """Rates per 1 000 patients per hook and topic (shown, and silent), and the card-count histogram."""
        rows = self.rows()
        width, label_w, bar_w, row_h = 760, 300, 380, 22
        top = 40
        peak = max([r["perThousandPatients"] + r["silentPerThousandPatients"] for r in rows] + [1.0])
        scale = bar_w / peak
        hist = sorted(self.tally.cards_per_patient.items())
        hist_top = top + row_h * max(len(rows), 1) + 70
        hist_h = 120
        height = hist_top + hist_h + 50
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">',
               f'<title>Cards per 1000 patients, evaluated on {self.evaluated_on}</title>',
               f'<text x="10" y="20" font-size="14" font-weight="bold">Cards per 1 000 patients '
               f'({self.tally.patients} patients, {self.evaluated_on})</text>']
        for i, r in enumerate(rows):
            y = top + i * row_h
            shown_w, silent_w = r["perThousandPatients"] * scale, r["silentPerThousandPatients"] * scale
            out.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(r["hook"])} · '
                       f'{escape(r["topic"])}</text>')
            out.append(f'<rect x="{label_w}" y="{y + 4}" width="{shown_w:.1f}" height="14" fill="#1f6feb"/>')
            if silent_w:
                out.append(f'<rect x="{label_w + shown_w:.1f}" y="{y + 4}" width="{silent_w:.1f}" height="14" '
                           'fill="#9aa7b8"/>')
            value = r["perThousandPatients"] + r["silentPerThousandPatients"]
            out.append(f'<text x="{label_w + shown_w + silent_w + 6:.1f}" y="{y + 15}">{value:.1f}</text>')
        legend_y = top + row_h * max(len(rows), 1) + 16
        out += [f'<rect x="{label_w}" y="{legend_y}" width="12" height="12" fill="#1f6feb"/>',
                f'<text x="{label_w + 16}" y="{legend_y + 10}">shown</text>',
                f'<rect x="{label_w + 80}" y="{legend_y}" width="12" height="12" fill="#9aa7b8"/>',
                f'<text x="{label_w + 96}" y="{legend_y + 10}">silent (would have shown)</text>',
                f'<text x="10" y="{hist_top - 12}" font-size="14" font-weight="bold">Patients by number of cards '
                'shown</text>']
        most = max([v for _, v in hist] + [1])
        col_w = min(60, (width - 80) / max(len(hist), 1))
        for i, (cards, patients) in enumerate(hist):
            h = hist_h * patients / most
            x = 40 + i * col_w
            out.append(f'<rect x="{x:.1f}" y="{hist_top + hist_h - h:.1f}" width="{col_w - 6:.1f}" height="{h:.1f}" '
                       'fill="#e36209"/>')
            out.append(f'<text x="{x + (col_w - 6) / 2:.1f}" y="{hist_top + hist_h + 14}" text-anchor="middle">'
                       f'{cards}</text>')
            out.append(f'<text x="{x + (col_w - 6) / 2:.1f}" y="{hist_top + hist_h - h - 4:.1f}" '
                       f'text-anchor="middle">{patients}</text>')
        out.append(f'<text x="40" y="{hist_top + hist_h + 32}">cards per patient</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"


def _per_thousand(count: int, patients: int) -> float:
    return round(1000 * count / patients, 2) if patients else 0.0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], numeric_from: int) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  " + "  ".join(c.rjust(widths[i]) if i >= numeric_from else c.ljust(widths[i])
                                for i, c in enumerate(row)).rstrip()

    return [fmt(header), "  " + "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]
