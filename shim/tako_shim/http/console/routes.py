"""The console's routes under ``/console/``: server-rendered pages over the backend interface.

Every page goes through ``page``: it resolves the session cookie (``auth.py``) to a tenant, refuses a
state-changing form without the session's CSRF token, renders errors as HTML and adds the strict
Content-Security-Policy. The API's own authentication middleware leaves ``/console/`` paths to this
module; API handlers never see a console request without a tenant.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from tako_shim.backends.base import Overrides, RecordFilter
from tako_shim.backends.sessions import SessionService
from tako_shim.errors import NotFound, ShimError
from tako_shim.http.common import BACKEND_KEY
from tako_shim.http.console import auth, views
from tako_shim.http.guards import content_disposition, read_body
from tako_shim.http.middleware import SETTINGS_KEY, TENANT_KEY, tenant_for
from tako_vm.models.wire import CODE_MAX_CHARS, ExecutionRecordFull

PREFIX = "/console"
EVENTS_ROUTE = "/jobs/{job_id}/events"  # the streaming issue's SSE route; used when the app has it
LOGIN_COOKIE = "tako_console_login"
SCAN_RECORDS = 2000  # the most records a time-range or code search reads
SCAN_CODE = 500  # the most submissions a code search reads
ACTIVITY_SCAN = 1000  # the most records the overview's chart reads
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# An SVG artifact opened directly: no script, no external load, nothing framed.
IMAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}


@dataclass
class ConsoleState:
    env: jinja2.Environment
    secret: str  # signs the CSRF token when authentication is off (loopback)
    static: dict[str, tuple[bytes, str]]
    app: web.Application


CONSOLE_KEY = web.AppKey("console", ConsoleState)
Page = Callable[[web.Request, auth.ConsoleSession], Awaitable[web.StreamResponse]]


def _load_static() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("tako_shim.http.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        files[entry.name] = (entry.read_bytes(), STATIC_TYPES.get(suffix, "application/octet-stream"))
    css = HtmlFormatter(style="friendly").get_style_defs(".highlight").encode()
    files["pygments.css"] = (css, "text/css")
    return files


def _html(state: ConsoleState, template: str, http_status: int = 200, **context: Any) -> web.Response:
    body = state.env.get_template(template).render(**context)
    return web.Response(text=body, status=http_status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _secure_headers(response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make forms send Origin: null
    response.headers.setdefault("Cache-Control", "no-store")


def page(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Session, tenant, CSRF and HTML errors for one console handler."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[CONSOLE_KEY]
        settings = request.app[SETTINGS_KEY]
        session = auth.session_for(settings, request.cookies.get(auth.COOKIE_NAME), state.secret)
        response: web.StreamResponse
        if session is None:
            if request.method == "GET" and not request.headers.get("HX-Request"):
                return _redirect(f"{PREFIX}/login")
            response = _error(request, None, 401, "Log in first.")
        else:
            request[TENANT_KEY] = session.tenant
            try:
                if request.method == "POST":
                    await read_body(request, settings.server_body_timeout_seconds)
                    form = await request.post()
                    token = form.get("csrf")
                    if not auth.csrf_valid(session, token if isinstance(token, str) else None):
                        raise _Forbidden("The form's CSRF token is missing or stale; reload the page.")
                response = await handler(request, session)
            except ShimError as exc:
                message = exc.detail if isinstance(exc.detail, str) else "The request was refused."
                response = _error(request, session, exc.status, message)
        _secure_headers(response)
        return response

    return wrapped


class _Forbidden(ShimError):
    status = 403


def _context(request: web.Request, session: auth.ConsoleSession | None, **values: Any) -> dict[str, Any]:
    settings = request.app[SETTINGS_KEY]
    return {
        "session": session,
        "auth_on": settings.api_auth_enabled,
        "has_sessions": getattr(request.app[BACKEND_KEY], "sessions", None) is not None,
        "prefix": PREFIX,
        **values,
    }


def _error(
    request: web.Request, session: auth.ConsoleSession | None, status: int, message: str
) -> web.Response:
    context = _context(request, session, status=status, message=message)
    return _html(request.app[CONSOLE_KEY], "error.html", status, **context)


def _route(app: web.Application, method: str, path: str) -> Callable[..., Any] | None:
    for resource in app.router.resources():
        if resource.canonical == path:
            for route in resource:
                if route.method == method:
                    return route.handler
    return None


# -- login -------------------------------------------------------------------------------------------


def _login_cookie(request: web.Request, response: web.Response, token: str) -> None:
    """The double-submit token of the login form (no session exists yet to bind a CSRF token to)."""
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="Strict", path=PREFIX, secure=request.secure
    )


async def login_form(request: web.Request) -> web.StreamResponse:
    state = request.app[CONSOLE_KEY]
    if not request.app[SETTINGS_KEY].api_auth_enabled:
        return _redirect(f"{PREFIX}/")
    token = secrets.token_urlsafe(24)
    response = _html(state, "login.html", **_context(request, None, login_token=token, error=None))
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="Strict", path=PREFIX, secure=request.secure
    )
    _secure_headers(response)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """Check the key once and answer with the session cookie (the key itself is never stored)."""
    state = request.app[CONSOLE_KEY]
    settings = request.app[SETTINGS_KEY]
    await read_body(request, settings.server_body_timeout_seconds)
    form = await request.post()
    key, token = form.get("api_key"), form.get("login_token")
    expected = request.cookies.get(LOGIN_COOKIE)
    if not (isinstance(token, str) and expected and secrets.compare_digest(token, expected)):
        response = _error(request, None, 403, "Login form expired; reload it.")
    elif not isinstance(key, str) or tenant_for(settings, key) is None:
        fresh = secrets.token_urlsafe(24)
        context = _context(request, None, login_token=fresh, error="That API key is not valid.")
        response = _html(state, "login.html", 401, **context)
        response.set_cookie(
            LOGIN_COOKIE, fresh, httponly=True, samesite="Strict", path=PREFIX, secure=request.secure
        )
    else:
        response = _redirect(f"{PREFIX}/")
        response.set_cookie(
            auth.COOKIE_NAME,
            auth.issue_cookie(key),
            httponly=True,
            samesite="Strict",
            path=PREFIX,
            secure=request.secure,
            max_age=auth.SESSION_SECONDS,
        )
        response.del_cookie(LOGIN_COOKIE, path=PREFIX)
    _secure_headers(response)
    return response


@page
async def logout(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    response = _redirect(f"{PREFIX}/login")
    response.del_cookie(auth.COOKIE_NAME, path=PREFIX)
    return response


async def static(request: web.Request) -> web.StreamResponse:
    found = request.app[CONSOLE_KEY].static.get(request.match_info["name"])
    if found is None:
        raise NotFound("Not found")
    body, content_type = found
    return web.Response(
        body=body, content_type=content_type, headers={"Cache-Control": "public, max-age=3600"}
    )


# -- overview ----------------------------------------------------------------------------------------


async def _activity(request: web.Request, tenant: str) -> views.Activity:
    backend = request.app[BACKEND_KEY]
    now = datetime.now(UTC)
    page_ = await backend.list_records(tenant, RecordFilter(limit=ACTIVITY_SCAN, inline_output_bytes=0))
    oldest = views.parse_time(page_.records[-1].created_at) if page_.records else None
    truncated = page_.has_more and oldest is not None and oldest > now - timedelta(hours=1)
    return await asyncio.to_thread(views.activity, page_.records, now, 60, truncated)


@page
async def overview(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    backend = request.app[BACKEND_KEY]
    stats, health, activity = await asyncio.gather(
        backend.pool_stats(session.tenant), backend.health(), _activity(request, session.tenant)
    )
    template = "_overview_stats.html" if request.headers.get("HX-Request") else "overview.html"
    return _html(
        request.app[CONSOLE_KEY],
        template,
        **_context(request, session, stats=stats, health=health, activity=activity, title="Overview"),
    )


# -- executions --------------------------------------------------------------------------------------


async def _code(request: web.Request, tenant: str, job_id: str) -> str:
    try:
        return (await request.app[BACKEND_KEY].get_submission(tenant, job_id)).code
    except ShimError:
        return ""


async def _matching(
    request: web.Request, tenant: str, filters: views.Filters
) -> tuple[list[Any], bool, bool]:
    """One page of records matching the filters: (records, has_more, scan_cut)."""
    backend = request.app[BACKEND_KEY]
    start = (filters.page - 1) * views.PAGE_SIZE
    base = RecordFilter(
        status=filters.status, job_type=filters.job_type, session_id=filters.session_id, inline_output_bytes=0
    )
    if not filters.scans:
        got = await backend.list_records(tenant, replace(base, limit=views.PAGE_SIZE, offset=start))
        return got.records, got.has_more, False
    found: list[ExecutionRecordFull] = []
    offset = code_reads = 0
    cut = False
    while len(found) <= start + views.PAGE_SIZE:
        got = await backend.list_records(tenant, replace(base, limit=200, offset=offset))
        for record in got.records:
            created = views.parse_time(record.created_at)
            if filters.since is not None and created is not None and created < filters.since:
                return found[start : start + views.PAGE_SIZE], len(found) > start + views.PAGE_SIZE, False
            if not views.in_range(record, filters):
                continue
            if filters.q:
                if code_reads >= SCAN_CODE:
                    cut = True
                    break
                code_reads += 1
                if not views.code_matches(await _code(request, tenant, record.execution_id), filters.q):
                    continue
            found.append(record)
        offset += len(got.records)
        if cut or not got.has_more:
            break
        if offset >= SCAN_RECORDS:
            cut = True
            break
    return found[start : start + views.PAGE_SIZE], len(found) > start + views.PAGE_SIZE, cut


@page
async def executions(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    filters = views.parse_filters(request.query)
    records, has_more, cut = await _matching(request, session.tenant, filters)
    codes = await asyncio.gather(*(_code(request, session.tenant, r.execution_id) for r in records))
    rows = [(r, views.first_line(code)) for r, code in zip(records, codes, strict=True)]
    job_types = [t.name for t in await request.app[BACKEND_KEY].job_types(session.tenant)]

    def link(**changes: Any) -> str:
        return f"{PREFIX}/executions?{urlencode(filters.query(**changes))}"

    context = _context(
        request,
        session,
        title="Executions",
        rows=rows,
        filters=filters,
        statuses=views.STATUSES,
        job_types=job_types,
        has_more=has_more,
        scan_cut=cut,
        scan_limits=(SCAN_RECORDS, SCAN_CODE),
        next_link=link(page=filters.page + 1) if has_more else None,
        prev_link=link(page=filters.page - 1) if filters.page > 1 else None,
        duration=views.duration,
    )
    return _html(request.app[CONSOLE_KEY], "executions.html", **context)


async def _children(request: web.Request, tenant: str, job_id: str) -> list[ExecutionRecordFull]:
    got = await request.app[BACKEND_KEY].list_records(
        tenant, RecordFilter(limit=SCAN_RECORDS, inline_output_bytes=0)
    )
    return [r for r in got.records if r.parent_execution_id == job_id]


@page
async def execution(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    backend = request.app[BACKEND_KEY]
    job_id = request.match_info["job_id"]
    try:
        record = await backend.get_record(session.tenant, job_id)
    except NotFound:
        raise NotFound("Execution not found") from None
    submission, children = await asyncio.gather(
        backend.get_submission(session.tenant, job_id), _children(request, session.tenant, job_id)
    )
    code_html = Markup(  # Pygments escapes the code it highlights
        await asyncio.to_thread(highlight, submission.code, PythonLexer(), HtmlFormatter(linenos="table"))
    )
    live = not views.is_terminal(record)
    has_events = _route(request.app, "GET", EVENTS_ROUTE) is not None
    if request.headers.get("HX-Request") and request.query.get("part") == "output":
        template = "_output.html"
    else:
        template = "execution.html"
    context = _context(
        request,
        session,
        title=f"Execution {job_id}",
        record=record,
        submission=submission,
        code_html=code_html,
        children=children,
        live=live,
        events_url=f"{PREFIX}/executions/{job_id}/events" if live and has_events else None,
        image_type=views.image_type,
        duration=views.duration,
        code_max=CODE_MAX_CHARS,
    )
    return _html(request.app[CONSOLE_KEY], template, **context)


@page
async def artifact(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    found = await request.app[BACKEND_KEY].get_artifact(
        session.tenant, request.match_info["job_id"], request.match_info["name"]
    )
    image = views.INLINE_IMAGE_TYPES.get("." + found.name.lower().rsplit(".", 1)[-1])
    headers = {"Cache-Control": "private, no-store"}
    if request.query.get("inline") == "1" and image is not None:
        response = web.Response(body=found.content, content_type=image, headers=headers)
    else:
        headers["Content-Disposition"] = content_disposition(found.name)
        response = web.Response(body=found.content, content_type="application/octet-stream", headers=headers)
    response.headers["Content-Security-Policy"] = IMAGE_CSP
    return response


@page
async def events(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    """The streaming issue's SSE route, for the console's cookie (EventSource cannot send a key)."""
    handler = _route(request.app, "GET", EVENTS_ROUTE)
    if handler is None:
        raise NotFound("Live output is not available on this server")
    response: web.StreamResponse = await handler(request)
    return response


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value.strip() else None


@page
async def rerun(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    submitted = await request.app[BACKEND_KEY].rerun(
        session.tenant, request.match_info["job_id"], Overrides()
    )
    return _redirect(f"{PREFIX}/executions/{submitted.job_id}")


@page
async def fork(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    code = _form_text(await request.post(), "code")
    if code is None:
        raise _BadForm("code: the forked job needs code")
    if len(code) > CODE_MAX_CHARS:
        raise _BadForm(f"code: longer than {CODE_MAX_CHARS} characters")
    submitted = await request.app[BACKEND_KEY].fork(
        session.tenant, request.match_info["job_id"], Overrides(code=code.replace("\r\n", "\n"))
    )
    return _redirect(f"{PREFIX}/executions/{submitted.job_id}")


class _BadForm(ShimError):
    status = 400


@page
async def cancel(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    await request.app[BACKEND_KEY].cancel(session.tenant, job_id)
    return _redirect(f"{PREFIX}/executions/{job_id}")


SESSION_EXECUTIONS_SHOWN = 200  # the newest executions a session's page shows, oldest first


def _session_service(request: web.Request) -> SessionService:
    service: SessionService | None = getattr(request.app[BACKEND_KEY], "sessions", None)
    if service is None:
        raise NotFound("Sessions are not available on this server")
    return service


@page
async def sessions(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    """The tenant's open sessions, and the ones that ended most recently (404 without sessions)."""
    open_, ended = views.split_sessions(await _session_service(request).list_sessions(session.tenant))
    context = _context(request, session, title="Sessions", open_sessions=open_, ended_sessions=ended)
    return _html(request.app[CONSOLE_KEY], "sessions.html", **context)


@dataclass(frozen=True)
class _Cell:
    number: int
    record: ExecutionRecordFull
    code_html: Markup


def _highlight_all(codes: list[str]) -> list[Markup]:
    lexer, formatter = PythonLexer(), HtmlFormatter()
    return [Markup(highlight(code, lexer, formatter)) for code in codes]  # Pygments escapes the code


@page
async def session_page(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    """One session and its executions in order; while it is open the part polls itself, and a poll
    that finds nothing new is a 204 (htmx keeps the page as it is)."""
    session_id = request.match_info["session_id"]
    info = await _session_service(request).get(session.tenant, session_id)  # another tenant's: 404
    part = request.headers.get("HX-Request") and request.query.get("part") == "executions"
    if part and views.session_unchanged(info, request.query.get("mark")):
        return web.Response(status=204)
    backend = request.app[BACKEND_KEY]
    got = await backend.list_records(
        session.tenant,
        RecordFilter(session_id=session_id, limit=SESSION_EXECUTIONS_SHOWN, inline_output_bytes=0),
    )
    records = list(reversed(got.records))  # oldest first
    codes = await asyncio.gather(*(_code(request, session.tenant, r.execution_id) for r in records))
    highlighted = await asyncio.to_thread(_highlight_all, list(codes))
    first = max(info.executions - len(records), 0) + 1 if got.has_more else 1
    cells = [_Cell(first + i, r, html) for i, (r, html) in enumerate(zip(records, highlighted, strict=True))]
    context = _context(
        request,
        session,
        title=f"Session {session_id}",
        info=info,
        cells=cells,
        has_more=got.has_more,
        live=info.status != "ended",
        mark=views.session_mark(info, len(records), got.has_more),
        duration=views.duration,
        list_link=f"{PREFIX}/executions?{urlencode({'session_id': session_id})}",
    )
    template = "_session.html" if part else "session.html"
    return _html(request.app[CONSOLE_KEY], template, **context)


@page
async def home(request: web.Request, session: auth.ConsoleSession) -> web.StreamResponse:
    return _redirect(f"{PREFIX}/overview")


def add_console(app: web.Application) -> None:
    """Mount the console on the API application (``create_app`` calls this when ``console_enabled``)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tako_shim.http.console", "templates"),
        autoescape=True,  # every value is escaped; only Pygments' output is marked safe
        undefined=jinja2.StrictUndefined,
    )
    app[CONSOLE_KEY] = ConsoleState(env=env, secret=secrets.token_hex(32), static=_load_static(), app=app)
    routes = [
        ("GET", "/", home),
        ("GET", "/login", login_form),
        ("POST", "/login", login),
        ("POST", "/logout", logout),
        ("GET", "/static/{name}", static),
        ("GET", "/overview", overview),
        ("GET", "/sessions", sessions),
        ("GET", "/sessions/{session_id}", session_page),
        ("GET", "/executions", executions),
        ("GET", "/executions/{job_id}", execution),
        ("GET", "/executions/{job_id}/events", events),
        ("GET", "/executions/{job_id}/artifacts/{name}", artifact),
        ("POST", "/executions/{job_id}/rerun", rerun),
        ("POST", "/executions/{job_id}/fork", fork),
        ("POST", "/executions/{job_id}/cancel", cancel),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, PREFIX + path, handler)
