"""The card's `smart` link to the assessment app (clinical-rules.md section 8, last bullet).

A Decision with criteria that the Questionnaire captures and that are NOT DOCUMENTED gets a link
``{type: smart, url: <launch URL>, appContext: '{"linkIds": [...]}', label: "Ask about: ..."}``.
The criterion -> item mapping is data (cds_service/data/smart/questionnaire-map.yaml).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import yaml

from cds_service.clinical.model import Decision, State

MAP_FILE = Path(__file__).resolve().parent.parent / "data" / "smart" / "questionnaire-map.yaml"
LAUNCH_PATH = "/smart/launch"
LABEL_ITEMS = 3  # the label names this many items, then "and N more"


@functools.lru_cache(maxsize=1)
def questionnaire_map() -> dict[str, dict[str, Any]]:
    """The mapping file: {criteria: {id: [linkId]}, ask: {linkId: words}, prefill: {linkId: fact}}."""
    data = yaml.safe_load(MAP_FILE.read_text("utf-8"))
    return {key: dict(data.get(key) or {}) for key in ("criteria", "ask", "prefill")}


def launch_url() -> str | None:
    """The app's launch URL: CDS_PUBLIC_BASE_URL (the app's settings, else the environment) + /smart/launch,
    else the URL the current request came in on; None when this service does not serve the app, or
    outside a request with nothing configured."""
    from flask import current_app, has_app_context, has_request_context, request

    base = None
    if has_app_context() and "cds" in current_app.extensions:
        if "cds_smart" not in current_app.extensions:  # the app is off here (no CDS_SMART_SECRET_KEY)
            return None
        base = current_app.extensions["cds"].settings.public_base_url
    base = base or os.environ.get("CDS_PUBLIC_BASE_URL")
    if not base and has_request_context():
        base = request.host_url
    return base.rstrip("/") + LAUNCH_PATH if base else None


def smart_link(decision: Decision, url: str | None = None) -> dict[str, Any] | None:
    """The `smart` link for a decision, or None when it has nothing the app could ask."""
    mapping = questionnaire_map()
    link_ids: list[str] = []
    for criterion in decision.criteria:
        if criterion.state is State.NOT_DOCUMENTED:
            for link_id in mapping["criteria"].get(criterion.id, ()):
                if link_id not in link_ids:
                    link_ids.append(link_id)
    url = url or launch_url()
    if not link_ids or not url:
        return None
    words = [mapping["ask"].get(link_id, link_id) for link_id in link_ids]
    label = "Ask about: " + ", ".join(words[:LABEL_ITEMS])
    if len(words) > LABEL_ITEMS:
        label += f" and {len(words) - LABEL_ITEMS} more"
    return {"label": label, "url": url, "type": "smart", "appContext": json.dumps({"linkIds": link_ids})}
