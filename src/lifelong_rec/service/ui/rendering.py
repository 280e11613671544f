"""How the dashboard answers: pages rendered from its templates with what every page shows,
redirects after a successful post, and posted forms read once their CSRF token and session
are checked."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from lifelong_rec import __version__
from lifelong_rec.service.ui.auth import (
    BROWSER_COOKIE,
    LOGIN_PATH,
    SESSION_COOKIE,
    Signer,
    new_browser_id,
)
from lifelong_rec.service.ui.filters import FILTERS
from lifelong_rec.service.ui.history import History

if TYPE_CHECKING:
    from lifelong_rec.service.engine import Engine
    from lifelong_rec.store import EventLog
    from lifelong_rec.store.postgres import PostgresEventLog

__all__ = [
    "NOTICES",
    "SECURITY_HEADERS",
    "STATIC",
    "TEMPLATES",
    "Dashboard",
    "browser_of",
    "cookie_options",
    "dashboard_of",
    "engine_of",
    "local_target",
    "message",
    "page",
    "read_form",
    "redirect",
    "signer_of",
]

_HERE = Path(__file__).parent
TEMPLATES = _HERE / "templates"
STATIC = _HERE / "static"
#: the pages load nothing from elsewhere, and nothing inline runs
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: what a redirect after a successful post says, by its ``done`` code
NOTICES = {
    "activated": "Serving is pinned to snapshot {version}; it stays there until you release it.",
    "released": "Serving follows the learner's newest model again.",
    "created": "Experiment {name} is running.",
    "stopped": "Experiment {name} is stopped: its users are back on the default policy and model.",
    "saved": "Saved in the catalogue.",
    "signed_in": "Signed in.",
    "signed_out": "Signed out.",
}
_NOTICE_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_BROWSER_ID = re.compile(r"[0-9a-f]{32}")
_FORM_FIELDS = 64  # the most fields a dashboard form has, with room

_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters.update(FILTERS)
_templates = Jinja2Templates(env=_environment)


@dataclass(frozen=True)
class Dashboard:
    """The dashboard's own state in the app: a connection to the event log for its reads (so
    the API's appends never wait behind them) and the sampled history."""

    log: EventLog | PostgresEventLog
    history: History


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def dashboard_of(request: Request) -> Dashboard:
    return request.app.state.dashboard


def signer_of(request: Request) -> Signer:
    return Signer(engine_of(request).settings.token)


def browser_of(request: Request) -> str | None:
    """The browser's id from its cookie, if it has a well-formed one."""
    value = request.cookies.get(BROWSER_COOKIE, "")
    return value if _BROWSER_ID.fullmatch(value) else None


def cookie_options(request: Request) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "strict",
        "path": "/ui",
        "secure": request.url.scheme == "https",
    }


def page(
    request: Request,
    template: str,
    active: str,
    context: Mapping[str, object] | None = None,
    status: int = 200,
) -> HTMLResponse:
    """``template`` rendered with ``context`` and what every page shows (who may write, what
    serves, the notice of a redirect), with the dashboard's headers; a browser without the
    dashboard's cookie gets one."""
    signer, browser = signer_of(request), browser_of(request)
    fresh = browser is None
    if browser is None:
        browser = new_browser_id()
    signed_in = signer.valid_session(request.cookies.get(SESSION_COOKIE), browser)
    learner = engine_of(request).learner
    dashboard_of(request).history.watch()
    common = {
        "active": active,
        "csrf": signer.csrf(browser),
        "signed_in": signed_in,
        "writes_open": signer.token is None,
        "can_write": signed_in or signer.token is None,
        "serving_version": learner.current.name,
        "pinned": learner.pinned,
        "service_version": __version__,
        "now": time.time(),
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "notice": _notice(request),
        "error": None,
    }
    response = _templates.TemplateResponse(
        request, template, common | dict(context or {}), status_code=status,
        headers=SECURITY_HEADERS,
    )  # fmt: skip
    if fresh:
        response.set_cookie(
            BROWSER_COOKIE, browser, max_age=365 * 86_400, **cookie_options(request)
        )
    return response


def message(request: Request, active: str, status: int, title: str, text: str) -> HTMLResponse:
    """A page that only says something (what went wrong, mostly)."""
    return page(request, "message.html", active, {"title": title, "text": text}, status)


def redirect(path: str, **query: str) -> RedirectResponse:
    """A 303 to ``path`` (a page of the dashboard) with ``query``."""
    joiner = "&" if "?" in path else "?"
    url = f"{path}{joiner}{urlencode(query)}" if query else path
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def local_target(target: str) -> str:
    """``target`` if it is a page of the dashboard, else the Overview (no open redirect)."""
    if target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


async def read_form(request: Request, session: bool = True) -> dict[str, str] | Response:
    """The posted form's fields (the last value of each), once its CSRF token is checked
    and, with ``session``, the session (``WriteGate`` checked it already, before the body
    was read; checked again here, where the form is used); else the answer to give."""
    signer, browser = signer_of(request), browser_of(request)
    if session and signer.token is not None:
        if not signer.valid_session(request.cookies.get(SESSION_COOKIE), browser):
            return redirect(LOGIN_PATH, expired="1")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return message(request, "", 415, "Not a form", "The dashboard's actions take its forms.")
    try:
        text = (await request.body()).decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return message(request, "", 400, "Unreadable form", "The form could not be read.")
    form = {name: values[-1] for name, values in fields.items()}
    if not signer.valid_csrf(form.get("csrf"), browser):
        return message(
            request, "", 403, "The form has expired",
            "It was not made by this page in this browser: reload the page and try again.",
        )  # fmt: skip
    return form


def _notice(request: Request) -> str | None:
    """The message of a redirect's ``done`` code, with its values if they are plain."""
    text = NOTICES.get(request.query_params.get("done", ""))
    if text is None:
        return None
    values = {}
    for name in ("version", "name"):
        value = request.query_params.get(name, "")
        values[name] = value if _NOTICE_VALUE.fullmatch(value) else "?"
    return text.format(**values)
