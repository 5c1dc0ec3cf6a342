"""Launch state kept in the browser, encrypted: the service keeps no session store and no answers.

Each value is a Fernet token (AES-CBC + HMAC, with its creation time) under a key derived from
CDS_SMART_SECRET_KEY, so the cookie reveals nothing (not the access token, not the patient id)
and cannot be altered. Every instance behind a load balancer must share the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


class Sealer:
    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        digest = hashlib.sha256(b"lbp-smart-cookie\0" + self._secret).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, data: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(data, separators=(",", ":")).encode()).decode()

    def unseal(self, token: str | None, max_age: int) -> dict[str, Any] | None:
        """The data, or None when missing, tampered with or older than max_age seconds."""
        if not token:
            return None
        try:
            data = json.loads(self._fernet.decrypt(token.encode(), ttl=max_age))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def csrf_token(self, session_id: str) -> str:
        """The form's anti-forgery token: bound to the launch session, unguessable without the secret."""
        return hmac.new(self._secret, b"csrf\0" + session_id.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session_id: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session_id), token or "")
