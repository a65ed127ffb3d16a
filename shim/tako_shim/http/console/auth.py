"""The console's session cookie and CSRF tokens: pure functions, no server-side session state.

A person enters an API key once (``POST /console/login``); the shim answers with an HttpOnly,
``SameSite=Strict`` cookie ``v1.<expiry>.<nonce>.<mac>`` where ``mac`` is HMAC-SHA256 keyed with that
API key. The key itself is never stored in the browser. Verifying a cookie tries every configured key
(constant-time), so it works on every shim replica without a shared secret, and removing a key from
the configuration ends its console sessions at once (fail-closed).

Every state-changing form carries a CSRF token, HMAC of the session nonce under the same key: a page
of another site can neither read it nor forge it. With authentication off (loopback only) the
"key" is a per-process random secret and the tenant is the default one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from tako_shim.config import DEFAULT_TENANT, Settings

COOKIE_NAME = "tako_console"
SESSION_SECONDS = 12 * 3600
_VERSION = "v1"


@dataclass(frozen=True)
class ConsoleSession:
    tenant: str
    csrf: str  # the token forms must carry


def _mac(key: str, purpose: str, *parts: str) -> str:
    message = "|".join(("tako-console", purpose, *parts)).encode()
    return hmac.new(key.encode("utf-8", "surrogatepass"), message, hashlib.sha256).hexdigest()


def issue_cookie(key: str, now: float | None = None, nonce: str | None = None) -> str:
    """A new session cookie value for a (valid) API key."""
    expiry = str(int((time.time() if now is None else now) + SESSION_SECONDS))
    nonce = nonce or secrets.token_hex(16)
    return f"{_VERSION}.{expiry}.{nonce}.{_mac(key, 'session', expiry, nonce)}"


def session_for(
    settings: Settings, cookie: str | None, local_secret: str, now: float | None = None
) -> ConsoleSession | None:
    """The session a cookie proves, or ``None`` (missing, malformed, expired, forged, or its key removed).

    With authentication off every visitor of the (loopback) console is the default tenant."""
    if not settings.api_auth_enabled:
        return ConsoleSession(DEFAULT_TENANT, _mac(local_secret, "csrf", "local"))
    if not cookie:
        return None
    parts = cookie.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
        return None
    _, expiry, nonce, mac = parts
    if int(expiry) <= (time.time() if now is None else now):
        return None
    found: ConsoleSession | None = None
    for key, tenant in settings.api_keys.items():  # no early exit: the time does not reveal which key
        if hmac.compare_digest(mac.encode(), _mac(key, "session", expiry, nonce).encode()):
            found = ConsoleSession(tenant, _mac(key, "csrf", nonce))
    return found


def csrf_valid(session: ConsoleSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf.encode(), presented.encode())
