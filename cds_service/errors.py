"""Exceptions shared by modules that must not import each other (settings, urls)."""

from __future__ import annotations


class SettingsError(ValueError):
    """A configuration value is invalid; raised at start-up, never per request."""
