"""The informaticists' console at /console: card preview, feedback analytics, rule review sheet.

Registered by the app factory only when the console is enabled (on in development, off in
production unless CDS_CONSOLE=true). It shows synthetic fixture data and aggregated feedback,
never patient data from an EHR: Bundles pasted into the preview are processed in memory for one
request and never stored. See docs/console.md.

Every console response carries its own strict Content-Security-Policy (the app's default,
``default-src 'none'``, would block the page's own CSS and JS): scripts and styles only from
/console/static, no inline script, no third-party host, and Trusted Types so that the single
code path that inserts (server-sanitised) HTML is the only one that can.
"""

from __future__ import annotations

from flask import Blueprint, Response

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

TRUSTED_TYPES_POLICY = "console-sanitized-html"
CONSOLE_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        f"trusted-types {TRUSTED_TYPES_POLICY}",
        "require-trusted-types-for 'script'",
    ]
)


@bp.after_request
def console_headers(response: Response) -> Response:
    """Runs before the app's own after_request, which only sets headers still missing."""
    response.headers["Content-Security-Policy"] = CONSOLE_CSP
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Robots-Tag", "noindex, nofollow")
    return response


from . import routes  # noqa: E402,F401  (registers the views on bp)
