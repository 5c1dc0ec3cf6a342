"""The report as terminal text and as CSV, both safe for text that clinicians typed.

Override reasons and comments come from the EHR, that is from anyone able to send feedback:

* **Terminal**: every control character (C0, DEL, C1 — so ``ESC [ …`` sequences — and Unicode
  format controls such as bidi overrides) is removed before printing (:func:`terminal_safe`).
* **CSV** (``cds-service report --csv``, ``/console/api/analytics.csv``): the OWASP CSV injection
  rule — a text cell beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return (or their
  full-width forms) gets a leading ``'`` so spreadsheets read it as text, and every text cell is
  quoted (:func:`csv_safe`). Numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Report

#: First characters that make a spreadsheet treat a cell as a formula (OWASP CSV injection).
FORMULA_TRIGGERS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")


def terminal_safe(value: object) -> str:
    """``value`` as text without control or format characters (newlines and tabs become spaces)."""
    out = []
    for ch in str(value):
        if ch in "\n\t\r":
            out.append(" ")
        elif unicodedata.category(ch) not in {"Cc", "Cf"}:
            out.append(ch)
    return "".join(out)


def csv_safe(value: str) -> str:
    """Neutralise a text cell: a leading formula trigger gets a ``'`` prefix (OWASP)."""
    return "'" + value if value[:1] in FORMULA_TRIGGERS else value


def report_text(report: Report) -> str:
    p = report.period
    scope = f" for {terminal_safe(report.service_id)}" if report.service_id else ""
    lines = [
        f"Card feedback{scope}: cards served {p.since} to {p.until} (UTC); outcome = latest answer per "
        "presentation (server receive time); repeated cards for one order and encounter count once",
        "",
    ]
    if not report.database_ready:
        lines += ["(no database or no feedback tables yet: nothing served)", ""]
    header = ("service", "topic", "served", "accepted", "overridden", "no answer", "accepted %", "overridden %",
              "silent", "suppressed", "rows")
    rows = [
        (t.service_id, t.topic, str(t.served), str(t.accepted), str(t.overridden), str(t.no_answer),
         _pct(t.acceptance_rate), _pct(t.override_rate), str(t.silent), str(t.suppressed), str(t.served_rows))
        for t in report.topics
    ]
    tot = report.totals
    rows.append(("total", "", str(tot.served), str(tot.accepted), str(tot.overridden), str(tot.no_answer),
                 _pct(tot.acceptance_rate), _pct(tot.override_rate), str(tot.silent), str(tot.suppressed),
                 str(tot.served_rows)))
    lines += _table(header, rows, numeric_from=2)
    lines += ["  served = presentations shown; silent = would have been shown (topic in silent rollout); "
              "suppressed = withheld after an override; rows = served-card rows before de-duplication"]
    if report.unknown_card_feedback:
        lines += ["", "Feedback for cards this service never served (not attributed): "
                  f"{report.unknown_card_feedback}"]
    reason_rows = [
        (t.service_id, t.topic, r.display or r.code or "(no reason given)", str(r.count))
        for t in report.topics for r in t.reasons
    ]
    lines += ["", "Override reasons"]
    lines += _table(("service", "topic", "reason", "count"), reason_rows, numeric_from=3) if reason_rows \
        else ["  (none)"]
    lines += ["", "Override comments"]
    if report.comments:
        for c in report.comments:
            reason = terminal_safe(c.reason_display or c.reason_code or "—")
            lines.append(f"  {c.outcome_timestamp:%Y-%m-%d}  {terminal_safe(c.topic)}  [{reason}]  "
                         f"{_one_line(terminal_safe(c.comment))}")
    else:
        lines.append("  (none)")
    lines += ["", "Weekly trend (week starting Monday)"]
    week_rows = [(w.week_start.isoformat() + (" (partial)" if w.partial else ""), str(w.served), str(w.accepted),
                  str(w.overridden), _pct(_rate(w.accepted, w.served)), str(w.silent), str(w.suppressed))
                 for w in report.weeks]
    lines += _table(("week", "served", "accepted", "overridden", "accepted %", "silent", "suppressed"), week_rows,
                    numeric_from=1)
    burden = [(topic, w.week_start.isoformat(), str(w.served), str(w.silent), str(w.suppressed), str(w.accepted),
               str(w.overridden))
              for topic, weeks in report.weeks_by_topic.items() for w in weeks if w.served or w.silent or w.suppressed]
    lines += ["", "Alert burden by topic and week"]
    lines += _table(("topic", "week", "shown", "silent", "suppressed", "accepted", "overridden"), burden,
                    numeric_from=2) if burden else ["  (none)"]
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "since", "until", "service_id", "topic", "topic_display", "served", "accepted", "overridden",
    "no_answer", "acceptance_rate", "override_rate", "override_reasons", "served_rows",
    "silent_would_have_shown", "suppressed",
)


def report_csv(report: Report) -> str:
    """One row per service and topic (rates as fractions 0–1; reasons as "display (n); …")."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(CSV_FIELDS)
    for t in report.topics:
        cells: list[object] = [
            report.period.since.isoformat(), report.period.until.isoformat(), t.service_id, t.topic, t.display,
            t.served, t.accepted, t.overridden, t.no_answer,
            "" if t.acceptance_rate is None else round(t.acceptance_rate, 4),
            "" if t.override_rate is None else round(t.override_rate, 4),
            "; ".join(f"{r.display or r.code or '(no reason)'} ({r.count})" for r in t.reasons),
            t.served_rows, t.silent, t.suppressed,
        ]
        writer.writerow([csv_safe(c) if isinstance(c, str) else c for c in cells])
    return buffer.getvalue()


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}"


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> list[str]:
    rows = [[terminal_safe(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(c).rjust(widths[i]) if i >= numeric_from else str(c).ljust(widths[i]) for i, c in enumerate(row)]
        return "  " + "  ".join(cells).rstrip()

    return [fmt(header), "  " + "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]
