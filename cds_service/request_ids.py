"""The request id: the client's ``X-Request-ID`` when it is plainly a random id, else a new one.

The id is written to every log line and echoed in the response, and logs never carry identifiers
(docs/security.md). A client or proxy may put anything in the header — ``MRN-77881234``, a name, a
date of birth — so only three shapes are kept: a UUID, a random-looking hex id of 16-64 digits (a trace
id, optionally after a short letter prefix such as ``req_``), or a short token with at most three
digits (``req-42``). Identifiers — MRNs, phone, card and national numbers, dates — are runs of decimal
digits and fail all three. Anything else is replaced by a generated id,
which the response's ``X-Request-ID`` hands back so the caller can still correlate.
"""

from __future__ import annotations

import re
import uuid

_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
#: An optional short letter prefix ("req_", "h") and a random hex part (a trace id).
_PREFIXED_HEX = re.compile(r"[A-Za-z_-]{0,8}?([0-9A-Fa-f]{16,64})")
_SHORT = re.compile(r"[A-Za-z0-9_.-]{1,16}")
_DIGIT_RUN = re.compile(r"[0-9]+")
MAX_DIGITS_IN_SHORT_TOKEN = 3
#: A random hex id has about 6 letters in 16 characters and rarely 16 digits in a row; a card,
#: account or phone number written in digits fails one of the two.
MIN_HEX_LETTERS = 2
MAX_DIGIT_RUN_IN_HEX = 15


def is_safe_request_id(value: str) -> bool:
    """True for a UUID, a (prefixed) random-looking hex id, or a short token with at most 3 digits."""
    if _UUID.fullmatch(value):
        return True
    hex_id = _PREFIXED_HEX.fullmatch(value)
    if hex_id:
        part = hex_id.group(1)
        letters = sum(not ch.isdigit() for ch in part)
        longest_digits = max((len(run) for run in _DIGIT_RUN.findall(part)), default=0)
        return letters >= MIN_HEX_LETTERS and longest_digits <= MAX_DIGIT_RUN_IN_HEX
    return bool(_SHORT.fullmatch(value)) and sum(ch.isdigit() for ch in value) <= MAX_DIGITS_IN_SHORT_TOKEN


def request_id(incoming: str | None) -> str:
    """The id to log and echo for a request whose ``X-Request-ID`` header is ``incoming``."""
    if incoming and is_safe_request_id(incoming):
        return incoming
    return uuid.uuid4().hex
