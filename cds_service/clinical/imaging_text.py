"""Text patterns for imaging orders coded only as text (clinical rules section 1, rev 2).

Loaded once at start-up from data/imaging-order-text.yaml (case-insensitive regular expressions a site can
extend): lumbar terms, modality terms, contrast terms, exclusions, and terms naming the SI joints/pelvis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

IMAGING_TEXT_FILE = Path(__file__).resolve().parent.parent / "data" / "imaging-order-text.yaml"


class ImagingTextError(ValueError):
    """The pattern file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ImagingText:
    """Compiled patterns of data/imaging-order-text.yaml (text-only lumbar imaging orders, rev 2)."""

    lumbar: tuple[re.Pattern[str], ...] = ()
    modality: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = ()
    contrast: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = ()
    excluded: tuple[re.Pattern[str], ...] = ()
    sacroiliac: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def load(cls, path: Path = IMAGING_TEXT_FILE) -> ImagingText:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ImagingTextError(f"{path}: cannot read imaging text patterns: {exc}") from exc

        def compile_all(values: Any, where: str) -> tuple[re.Pattern[str], ...]:
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ImagingTextError(f"{path}: {where}: expected a list of regular expressions")
            try:
                return tuple(re.compile(v, re.IGNORECASE) for v in values)
            except re.error as exc:
                raise ImagingTextError(f"{path}: {where}: invalid regex: {exc}") from exc

        def groups(name: str) -> tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]:
            value = raw.get(name)
            if not isinstance(value, dict):
                raise ImagingTextError(f"{path}: {name}: expected a mapping of class to patterns")
            return tuple((str(k), compile_all(v, f"{name}.{k}")) for k, v in value.items())

        if not isinstance(raw, dict):
            raise ImagingTextError(f"{path}: expected a mapping")
        return cls(
            compile_all(raw.get("lumbar"), "lumbar"),
            groups("modality"),
            groups("contrast"),
            compile_all(raw.get("not", []), "not"),
            compile_all(raw.get("sacroiliac", []), "sacroiliac"),
        )
