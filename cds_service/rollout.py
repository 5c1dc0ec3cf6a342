"""Go-live governance from the site configuration: per-topic rollout and suppression after an override.

Hospitals switch CDS on in stages. The site configuration (``CDS_SITE_CONFIG``, the same YAML file as
site value sets and thresholds) may say, per card topic::

    rollout:                      # default for every topic: active
      axspa-referral: silent      # evaluated and recorded as "would have shown", not returned
      self-management: off        # evaluated (rules are not switched off piecemeal) but neither
                                  #   returned nor recorded
    suppression:                  # off unless listed; needs CDS_PATIENT_HASH_KEY
      - topic: axspa-referral
        reason: already-referred  # override reason code (the topic's card file lists them)
        days: 90                  # the topic is not shown again for that patient for 90 days

The hook engine calls :meth:`Governance.apply` on the Decisions of every request: what it returns as
``shown`` is answered; ``withheld`` is recorded with its disposition (``silent`` or ``suppressed``) so
analytics show the alert burden a topic would add. Suppressed cards are recorded too, so a site sees
how much suppression hides. Suppression reads a keyed hash of the patient id (never the id): see
README "Suppression after an override" for the privacy trade-off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SettingsError
from .tables import DISPOSITION_SILENT, DISPOSITION_SUPPRESSED

ACTIVE, SILENT, OFF = "active", "silent", "off"
MODES = (ACTIVE, SILENT, OFF)
MAX_SUPPRESSION_DAYS = 3650


@dataclass(frozen=True)
class Governance:
    """Rollout modes per topic (missing = active) and suppression days per (topic, override reason)."""

    rollout: Mapping[str, str] = field(default_factory=dict)
    suppression: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def mode(self, topic: str) -> str:
        return self.rollout.get(topic, ACTIVE)

    @property
    def suppressible_topics(self) -> frozenset[str]:
        return frozenset(topic for topic, _ in self.suppression)

    def apply(self, decisions: Iterable[Any],
              suppressed_topics: Iterable[str] = ()) -> tuple[list[Any], list[tuple[Any, str]]]:
        """Split Decisions (anything with ``.topic``) into those to return and those withheld.

        Returns ``(shown, withheld)``; withheld items are ``(decision, disposition)``. ``off`` topics
        are in neither. A silent topic stays silent even when suppressed (it was never shown).
        """
        suppressed = set(suppressed_topics)
        shown: list[Any] = []
        withheld: list[tuple[Any, str]] = []
        for decision in decisions:
            mode = self.mode(decision.topic)
            if mode == OFF:
                continue
            if mode == SILENT:
                withheld.append((decision, DISPOSITION_SILENT))
            elif decision.topic in suppressed:
                withheld.append((decision, DISPOSITION_SUPPRESSED))
            else:
                shown.append(decision)
        return shown, withheld


def load(site_config: Path | None, topics: Mapping[str, Iterable[str]], *, patient_hash_key: str | None) -> Governance:
    """Read the ``rollout`` and ``suppression`` sections. ``topics`` maps each known card topic to its
    override reason codes (from the card files). Raises SettingsError naming the offending entry."""
    if site_config is None:
        return Governance()
    source = str(site_config)
    try:
        config = yaml.safe_load(Path(site_config).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{source}: cannot read site configuration: {exc}") from exc
    if not isinstance(config, dict):
        return Governance()  # the knowledge loader reports the shape of the file
    rollout = _rollout(config.get("rollout"), topics, source)
    suppression = _suppression(config.get("suppression"), topics, source)
    if suppression and not patient_hash_key:
        raise SettingsError(f"{source}: suppression needs CDS_PATIENT_HASH_KEY (suppression is per patient, and "
                            "the service stores only a keyed hash of the patient id)")
    return Governance(rollout, suppression)


def _rollout(raw: Any, topics: Mapping[str, Iterable[str]], source: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: rollout: expected a mapping of card topic to {'/'.join(MODES)}")
    out = {}
    for topic, mode in raw.items():
        if topic not in topics:
            raise SettingsError(f"{source}: rollout.{topic}: unknown card topic; known: {sorted(topics)}")
        if mode is False:  # YAML 1.1 reads a bare `off` as false
            mode = OFF
        if mode not in MODES:
            raise SettingsError(f"{source}: rollout.{topic}: expected one of {', '.join(MODES)}, got {mode!r}")
        out[str(topic)] = mode
    return out


def _suppression(raw: Any, topics: Mapping[str, Iterable[str]], source: str) -> dict[tuple[str, str], int]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise SettingsError(f"{source}: suppression: expected a list of {{topic, reason, days}}")
    out: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(raw):
        where = f"{source}: suppression[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"topic", "reason", "days"}:
            raise SettingsError(f"{where}: expected exactly the keys topic, reason, days")
        topic, reason, days = entry["topic"], entry["reason"], entry["days"]
        if topic not in topics:
            raise SettingsError(f"{where}.topic: unknown card topic {topic!r}; known: {sorted(topics)}")
        reasons = set(topics[topic])
        if reason not in reasons:
            raise SettingsError(f"{where}.reason: {reason!r} is not an override reason of {topic}; "
                                f"its card offers {sorted(reasons)}")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_SUPPRESSION_DAYS:
            raise SettingsError(f"{where}.days: expected a whole number of days from 1 to {MAX_SUPPRESSION_DAYS}")
        if (topic, reason) in out:
            raise SettingsError(f"{where}: {topic}/{reason} is listed twice")
        out[(topic, reason)] = days
    return out
