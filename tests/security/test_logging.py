"""JSON log lines with allowlisted fields only, and redaction of anything token-like."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from cds_service.logging_setup import LOGGED_FIELDS, RedactingFilter, configure_logging, redact

JWT = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCJ9"
    ".eyJpc3MiOiJodHRwczovL2Voci5leGFtcGxlLm9yZyJ9"
    ".MEUCIQDx4Zr9jKq3v2b8n1t0aYpQ-_sig"
)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("INFO", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_structured_fields(log_stream: io.StringIO) -> None:
    logging.getLogger("cds_service.hooks").info(
        "served %d cards",
        2,
        extra={
            "request_id": "r-1",
            "service": "lbp-imaging",
            "hook": "order-select",
            "hook_instance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "status": 200,
            "duration_ms": 12.5,
            "card_topics": ["imaging-not-indicated"],
            "card_ids": ("0b8e4f7e-0c57-4b8c-9a51-8f2f5d0f6c11", "5a4c2d9e-7b1f-4e2a-8c3d-1e9f0a6b7c22"),
        },
    )
    [line] = lines(log_stream)
    assert line["message"] == "served 2 cards"
    assert line["level"] == "INFO" and line["logger"] == "cds_service.hooks"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert line["status"] == 200 and line["duration_ms"] == 12.5
    assert line["card_ids"] == ["0b8e4f7e-0c57-4b8c-9a51-8f2f5d0f6c11", "5a4c2d9e-7b1f-4e2a-8c3d-1e9f0a6b7c22"]
    assert line["hook_instance"] == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"


def test_fields_outside_the_allowlist_are_dropped(log_stream: io.StringIO) -> None:
    logging.getLogger("cds_service").info(
        "evaluated",
        extra={
            "patient_name": "Jane Doe",
            "birthDate": "1970-01-01",
            "resource": {"resourceType": "Patient"},
        },
    )
    [line] = lines(log_stream)
    assert set(line) == {"ts", "level", "logger", "message"}
    assert "Jane" not in log_stream.getvalue() and "1970" not in log_stream.getvalue()
    assert "patient_name" not in LOGGED_FIELDS


def test_exception_message_dropped_but_type_and_stack_kept(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("birthDate 1970-01-01 of Jane Doe is invalid")
    except ValueError:
        logging.getLogger("cds_service").exception("evaluation failed", extra={"error_type": "ValueError"})
    [line] = lines(log_stream)
    assert line["exc_type"] == "ValueError"
    assert any("test_logging.py" in frame for frame in line["stack"])
    assert "Jane" not in log_stream.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        f"token {JWT}",
        f"Authorization: Bearer {JWT}",
        "Authorization: Bearer opaque-access-token-123",
        "authorization=Basic dXNlcjpwYXNz",
        '{"access_token": "opaque-access-token-123", "token_type": "Bearer"}',
        "GET /fhir?access_token=opaque-access-token-123&x=1",
        f"jwe {JWT}.cGFydDQ.cGFydDU",
    ],
)
def test_redact(text: str) -> None:
    cleaned = redact(text)
    assert JWT not in cleaned
    assert "opaque-access-token-123" not in cleaned
    assert "dXNlcjpwYXNz" not in cleaned
    assert "REDACTED" in cleaned


def _redact_without_prefilter(text: str) -> str:
    """The three substitutions alone: what redact() answered before its one-pass pre-check."""
    from cds_service.logging_setup import _BEARER_RE, _JWT_RE, _REDACTED, _SECRET_FIELD_RE

    text = _SECRET_FIELD_RE.sub(lambda match: f"{match.group(1)}{_REDACTED}", text)
    text = _JWT_RE.sub("[REDACTED-JWT]", text)
    return _BEARER_RE.sub(lambda match: f"{match.group(1)} {_REDACTED}", text)


def test_the_pre_check_never_changes_what_is_redacted() -> None:
    """Random texts built from the patterns' pieces, in every case and with the non-ASCII letters that
    Python's case-insensitive matching folds to ASCII ones (dotless i, long s, Kelvin sign)."""
    import random

    pieces = ["eyJ", "eYj", "EYJ", JWT, "Bearer", "bEaReR", "beare", "access_token", "ACCESS_TOKEN", "id_token",
              "refresh_token", "client_secret", "password", "paſſword", "authorization", "authorızation",
              "AUTHORIZATION", "toKen", "to\u212aen", "=", ":", " ", "%20", "+", '"', "'", "abc123", "x.y_z-",
              "served 2 cards", "&", ",", ";", "}", "Basic ", "\n"]
    rng = random.Random(16)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert redact(text) == _redact_without_prefilter(text), text


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "served 2 cards for hook order-select in 12 ms (status 200)"
    assert redact(text) == text


def test_tokens_are_redacted_in_message_args_and_fields(log_stream: io.StringIO) -> None:
    log = logging.getLogger("cds_service.test")
    log.warning("header %s", f"Bearer {JWT}", extra={"check": JWT, "card_ids": [JWT]})
    log.error(f"embedded {JWT}")
    output = log_stream.getvalue()
    assert JWT not in output
    assert JWT.split(".")[2] not in output
    assert output.count("REDACTED") >= 3
    assert "[not-a-uuid]" in output  # card_ids carry UUIDs only


def test_client_supplied_identifiers_are_logged_only_when_uuid_shaped(log_stream: io.StringIO) -> None:
    """hookInstance and feedback card ids are any string on the wire: a name or an MRN must not pass."""
    uuid_value = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    logging.getLogger("cds_service.hooks").info(
        "request",
        extra={"hook_instance": "Jane Doe MRN 12345", "card_ids": [uuid_value, "Jane Doe 1970-01-01"]},
    )
    logging.getLogger("cds_service.hooks").info("request", extra={"hook_instance": uuid_value.upper()})
    first, second = lines(log_stream)
    assert first["hook_instance"] == "[not-a-uuid]"
    assert first["card_ids"] == [uuid_value, "[not-a-uuid]"]
    assert second["hook_instance"] == uuid_value.upper()
    assert "Jane" not in log_stream.getvalue() and "12345" not in log_stream.getvalue()


def test_filter_mutates_the_record_for_every_handler() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", (JWT,), None)
    assert RedactingFilter().filter(record) is True
    assert JWT not in record.getMessage()


def test_configure_logging_is_idempotent_and_validates_the_level() -> None:
    root = logging.getLogger()
    level = root.level
    try:
        first = configure_logging("info", stream=io.StringIO())
        second = configure_logging("WARNING", stream=io.StringIO())
        assert first not in root.handlers and second in root.handlers
        assert root.level == logging.WARNING
        with pytest.raises(ValueError):
            configure_logging("LOUD")
    finally:
        for handler in list(root.handlers):
            if getattr(handler, "_cds_service_json_handler", False):
                root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


def test_chatty_libraries_stay_at_warning_even_in_debug() -> None:
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("DEBUG", stream=io.StringIO())
    try:
        assert logging.getLogger("urllib3").level == logging.WARNING
        assert logging.getLogger("sqlalchemy.engine").level == logging.WARNING
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


def test_warnings_are_logged_as_json(log_stream: io.StringIO) -> None:
    try:
        warnings.warn("deprecated thing", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    assert any(line["logger"] == "py.warnings" for line in lines(log_stream))
