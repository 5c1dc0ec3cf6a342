"""What a patient-scoped SMART v2 token may do on the EHR launch harness's FHIR proxy.

Enough of SMART App Launch 2.0 scopes (``patient/<Type>.<cruds>``, and the v1 ``read``/``write``/``*``
spellings) and of the patient compartment for the harness to refuse what a real EHR would refuse:
another patient's data, a search that names no patient, a write for someone else.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from werkzeug import Request

# Parameters that carry the patient in a search, per the R4 compartment (the prefetch searches use these).
PATIENT_PARAMS = ("patient", "subject", "_id")


def scope_refusal(scope: str, patient: str | None, request: Request, rest: str) -> str | None:
    """Why a patient-scoped token may not make this request (None = allowed)."""
    parts = [p for p in rest.split("/") if p]
    if not parts:
        return "system-level requests need a system token"
    rtype = parts[0]
    write = request.method in {"POST", "PUT", "PATCH", "DELETE"}
    needed = "c" if request.method == "POST" else "u" if write else ("r" if len(parts) > 1 else "s")
    if not any(scope_allows(s, rtype, needed) for s in scope.split()):
        return f"scope does not allow {needed} on {rtype}"
    patient = patient or ""
    if write:
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            return "unreadable body"
        subject = ((body.get("subject") or {}).get("reference") or "") if isinstance(body, dict) else ""
        return None if subject == f"Patient/{patient}" else "a patient-scoped token writes only for its patient"
    if len(parts) > 1:  # reads by id: checked for Patient only (enough for the harness)
        return None if rtype != "Patient" or parts[1] == patient else "another patient"
    values = [v for p, vs in parse_qs(urlsplit(request.url).query).items() if p in PATIENT_PARAMS for v in vs]
    wanted = {patient, f"Patient/{patient}"}
    if values and all(v in wanted for v in values):
        return None
    return "a patient-scoped search must name the token's patient"


def scope_allows(scope: str, rtype: str, needed: str) -> bool:
    context, _, rest = scope.partition("/")
    if context != "patient" or not rest:
        return False
    name, _, perms = rest.partition(".")
    if name not in {"*", rtype}:
        return False
    if perms in {"read", "*"}:  # SMART v1 spellings
        return needed in "rs" or perms == "*"
    if perms == "write":
        return needed in "cud"
    return needed in perms
