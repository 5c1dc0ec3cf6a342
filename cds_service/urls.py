"""URL checks shared by every place that calls out: the FHIR client, JWKS/jku fetching, `aud`.

Matching is on parsed components (scheme, host, port, path segments), never on string prefixes,
so `http://127.0.0.1.evil.example` or `http://127.0.0.1@evil.example` never pass for `http://127.0.0.1`.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .errors import SettingsError

_LOOPBACK_NAMES = {"localhost"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback IP literals: the only hosts where plain http is tolerated."""
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _netloc(scheme: str, host: str, port: int | None) -> str:
    host = host.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def check_service_url(url: str, what: str) -> str:
    """Validate a configured URL (or prefix): https, or http on a loopback host; no userinfo/fragment.

    Raises SettingsError naming ``what`` so that a bad issuers file fails at start-up, not per request.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise SettingsError(f"{what}: {url!r} is not a valid URL") from exc
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise SettingsError(f"{what}: {url!r} must be an absolute https URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise SettingsError(f"{what}: {url!r} must use https (plain http only for loopback dev URLs)")
    if parts.username or parts.password or parts.fragment:
        raise SettingsError(f"{what}: {url!r} must not carry credentials or a fragment")
    return url


def url_has_prefix(url: str, prefix: str) -> bool:
    """True when ``url`` lies under ``prefix`` by parsed components, not by string prefix.

    Scheme, host and port (default ports normalised) must be equal and the path must equal the
    prefix path or continue it at a "/" boundary, so ``https://ehr.example`` does not admit
    ``https://ehr.example.evil`` and ``/jwks`` does not admit ``/jwks-attacker``. URLs with userinfo,
    a fragment, dot segments or encoded dots/slashes are refused outright: they are how prefix checks
    are usually bypassed, and no legitimate JWKS URL needs them. Plain http only for loopback hosts.
    """
    try:
        target = urlsplit(url)
        target_port = target.port
        allowed = urlsplit(prefix)
        allowed_port = allowed.port
    except ValueError:
        return False
    if target.scheme not in {"http", "https"} or not target.hostname:
        return False
    if target.username or target.password or target.fragment or "\\" in url:
        return False
    if target.scheme == "http" and not is_loopback_host(target.hostname):
        return False
    lowered_path = target.path.lower()
    if "%2e" in lowered_path or "%2f" in lowered_path or "%5c" in lowered_path:
        return False
    if any(segment in {".", ".."} for segment in target.path.split("/")):
        return False
    if target.scheme != allowed.scheme or not allowed.hostname:
        return False
    if allowed_port is None and is_loopback_host(allowed.hostname):
        # a loopback prefix without a port admits any port: development servers pick ports freely
        if target.hostname.lower() != allowed.hostname.lower():
            return False
    elif _netloc(target.scheme, target.hostname, target_port) != _netloc(
        allowed.scheme, allowed.hostname, allowed_port
    ):
        return False
    base_path = allowed.path
    if allowed.query:  # a prefix with a query string is an exact URL
        return target.path == base_path and target.query == allowed.query
    if not base_path or base_path == "/":
        return True
    if base_path.endswith("/"):
        return target.path.startswith(base_path)
    return target.path == base_path or target.path.startswith(base_path + "/")


def normalise_url(url: str) -> str | None:
    """Canonical form used to compare ``aud`` with the called URL.

    Lower-case scheme and host, default port dropped, trailing slash dropped, fragment dropped. The
    query is kept (CDS Hooks endpoints have none, so a token naming one does not match). None when
    the value is not an absolute http(s) URL.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"} or not parts.hostname:
        return None
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{_netloc(scheme, parts.hostname, port)}{path}{query}"


def url_allowed(url: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """True when url lies under one of the allowlisted prefixes (see url_has_prefix)."""
    return any(url_has_prefix(url, prefix) for prefix in prefixes)
