"""Partial FHIR dates and calendar arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from cds_service.clinical.dates import (
    add_months,
    completed_years,
    parse_fhir_date,
    today_of,
    within_last_days,
    within_last_months,
)


@pytest.mark.parametrize(
    ("text", "earliest", "latest"),
    [
        ("2024", date(2024, 1, 1), date(2024, 12, 31)),
        ("2024-02", date(2024, 2, 1), date(2024, 2, 29)),
        ("2024-02-10", date(2024, 2, 10), date(2024, 2, 10)),
        ("2024-02-10T23:30:00-05:00", date(2024, 2, 10), date(2024, 2, 10)),
        ("2024-02-10T01:00:00Z", date(2024, 2, 10), date(2024, 2, 10)),
    ],
)
def test_partial_dates_become_spans(text: str, earliest: date, latest: date) -> None:
    span = parse_fhir_date(text)
    assert span and (span.earliest, span.latest) == (earliest, latest)


@pytest.mark.parametrize("text", [None, "", "yesterday", "2024-13", "2024-02-30", 20240210])
def test_malformed_dates_are_none(text: object) -> None:
    assert parse_fhir_date(text) is None


def test_add_months_clamps_to_month_end() -> None:
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert add_months(date(2024, 11, 15), 3) == date(2025, 2, 15)
    assert add_months(date(2024, 3, 15), -12) == date(2023, 3, 15)


def test_completed_years_counts_the_birthday_itself() -> None:
    assert completed_years(date(1980, 6, 15), date(2025, 6, 15)) == 45
    assert completed_years(date(1980, 6, 16), date(2025, 6, 15)) == 44


def test_windows_are_inclusive_and_partial_dates_count_if_any_day_is_inside() -> None:
    today = date(2025, 6, 15)
    assert within_last_days(parse_fhir_date("2025-06-01"), today, 14)
    assert not within_last_days(parse_fhir_date("2025-05-31"), today, 14)
    assert within_last_days(parse_fhir_date("2025-05"), today, 30)
    assert not within_last_days(parse_fhir_date("2025-07-01"), today, 14)  # future
    assert within_last_months(parse_fhir_date("2024-06-15"), today, 12)
    assert not within_last_months(parse_fhir_date("2024-06-14"), today, 12)


def test_today_of_uses_the_given_time_zone() -> None:
    assert today_of(datetime(2025, 6, 15, 23, 0, tzinfo=UTC)) == date(2025, 6, 15)
    assert today_of(date(2025, 6, 15)) == date(2025, 6, 15)
