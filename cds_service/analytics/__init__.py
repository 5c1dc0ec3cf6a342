"""Feedback analytics and alert burden, per card topic and service (see :mod:`.model` for definitions).

Used by the console (``/console/analytics`` and its JSON/CSV endpoints) and by the command line
(``cds-service report``), so the page and the terminal always show the same figures.
"""

from .command import main
from .model import MAX_PERIOD_DAYS, Comment, Period, PeriodError, ReasonCount, Report, TopicStats, WeekStats
from .queries import MAX_COMMENTS, build_report, latest_answers, topic_displays

__all__ = [
    "MAX_COMMENTS", "MAX_PERIOD_DAYS", "Comment", "Period", "PeriodError", "ReasonCount", "Report", "TopicStats",
    "WeekStats", "build_report", "latest_answers", "main", "topic_displays",
]
