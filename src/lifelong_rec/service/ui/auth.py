"""Who may write through the dashboard: the service's token, typed once into the sign-in form,
becomes a session cookie; every form carries a CSRF token.

Cookies, both ``HttpOnly``, ``SameSite=Strict`` and scoped to ``/ui``:

- ``lr_ui_browser``: a random id the browser gets on its first page. The CSRF token of every
  form is an HMAC of it, so a page of another site can neither read nor forge one.
- ``lr_ui_session``: ``<expiry>.<HMAC of (browser id, expiry)>``, set by a sign-in with the
  right token and valid for :data:`SESSION_SECONDS`. The HMAC key is derived from the token:
  it never travels, every replica with the same token accepts the session, and a new token
  ends every session.

:class:`WriteGate` replaces the API's :class:`~lifelong_rec.service.deps.TokenMiddleware` in
the app: the API's writes still need ``Authorization: Bearer <token>``, the dashboard's
(``POST /ui/...``) a valid session instead, checked as the token is, before any byte of the
body is read. Only the sign-in form may post without one, and only a small body. A post
whose ``Origin`` is another site is refused whatever it carries. Without a token configured,
writes are open, as the API's are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from lifelong_rec.service.deps import WRITE_METHODS, TokenMiddleware

__all__ = [
    "BROWSER_COOKIE",
    "LOGIN_PATH",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "UI_PREFIX",
    "Signer",
    "WriteGate",
    "is_ui_path",
    "new_browser_id",
]

UI_PREFIX = "/ui"
LOGIN_PATH = "/ui/login"
BROWSER_COOKIE = "lr_ui_browser"
SESSION_COOKIE = "lr_ui_session"
SESSION_SECONDS = 12 * 3600
#: the largest body an anonymous post (the sign-in form) may have
MAX_LOGIN_BYTES = 4_096
# Without a token there are no sessions; CSRF tokens are signed with a key of this process.
_PROCESS_KEY = secrets.token_bytes(32)


def is_ui_path(path: str) -> bool:
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def new_browser_id() -> str:
    return secrets.token_hex(16)


class Signer:
    """Signs and checks the dashboard's sessions and CSRF tokens with a key derived from the
    service's ``token`` (a key of this process when there is none: no session then)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._key = (
            _PROCESS_KEY
            if token is None
            else hashlib.sha256(b"lifelong-rec dashboard\x00" + token.encode()).digest()
        )

    def accepts_token(self, typed: str) -> bool:
        """Whether ``typed`` is the service's token (constant time)."""
        return self.token is not None and hmac.compare_digest(typed.encode(), self.token.encode())

    def session(self, browser: str, now: float | None = None) -> str:
        """A session cookie's value for ``browser``, valid for :data:`SESSION_SECONDS`."""
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        return f"{expires}.{self._sign('session', browser, str(expires))}"

    def valid_session(self, value: str | None, browser: str | None) -> bool:
        """Whether ``value`` is an unexpired session of ``browser`` signed with this key."""
        if self.token is None or not value or not browser:
            return False
        expires, _, signature = value.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._sign("session", browser, expires))

    def csrf(self, browser: str) -> str:
        """The CSRF token of ``browser``'s forms."""
        return self._sign("csrf", browser)

    def valid_csrf(self, value: str | None, browser: str | None) -> bool:
        return bool(value and browser) and hmac.compare_digest(str(value), self.csrf(str(browser)))

    def _sign(self, purpose: str, *parts: str) -> str:
        message = "\x00".join((purpose, *parts)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


class WriteGate:
    """The app's write check: the API's token for API writes (:class:`TokenMiddleware`),
    a session for the dashboard's, both before any byte of the body is read. A pure ASGI
    middleware.

    A dashboard post that is refused gets a short HTML answer: 403 from another site, 413 for
    a sign-in body over :data:`MAX_LOGIN_BYTES`, and, without a valid session, a 303 to the
    sign-in page.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.api = TokenMiddleware(app, token)
        self.signer = Signer(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or not is_ui_path(scope["path"])
        ):
            await self.api(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope["path"], headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, text, location = refusal
        body = f"<!doctype html><title>{status}</title><p>{text}</p>".encode()
        reply = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if location:
            reply.append((b"location", location.encode()))
        if _body_may_exceed(headers, MAX_LOGIN_BYTES):
            reply.append((b"connection", b"close"))  # the body stays unread
        await send({"type": "http.response.start", "status": status, "headers": reply})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        """(status, text, location) of a refused dashboard post; None lets it through."""
        origin = headers.get(b"origin", b"").decode("latin-1")
        host = headers.get(b"host", b"").decode("latin-1")
        if origin and origin != "null" and urlsplit(origin).netloc != host:
            return 403, "posts from another site are refused", ""
        if origin == "null":
            return 403, "posts from an opaque origin are refused", ""
        if path == LOGIN_PATH:
            if _body_may_exceed(headers, MAX_LOGIN_BYTES):
                return 413, "the sign-in form is small; this body is not", ""
            return None
        if self.signer.token is None:
            return None
        cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
        if self.signer.valid_session(cookies.get(SESSION_COOKIE), cookies.get(BROWSER_COOKIE)):
            return None
        return 303, "sign in first", f"{LOGIN_PATH}?expired=1"


def _body_may_exceed(headers: dict[bytes, bytes], size: int) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return not length.isdigit() or int(length) > size
    return b"transfer-encoding" in headers
