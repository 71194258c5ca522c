"""The web pages of `huarizo serve`, served by the same process as the API: `/ui` (chat with the served model) and
`/arena` (blind pairwise votes, `huarizo.serve.arena`). Plain HTML, CSS and JavaScript from the package's `static/`
folder: no CDN, no build step, everything works offline.

Access:
- A session is an HTTP-only, `SameSite=Strict` cookie signed with a key drawn at start (restarting the server ends
  every session; nothing secret is written to disk). Without API keys a visit gets one; with `--api-key`, only the
  login form gives one, to whoever types a key (the key never goes into a URL).
- Every form post and every page request that changes something carries a CSRF token bound to the session (a form
  field, or the `X-CSRF-Token` header), and its `Origin`, when the browser sends one, must be this server.
- Served on loopback, pages answer only to a loopback `Host` (a DNS-rebinding page cannot read them).
- The chat page talks to `/v1/chat/completions` like any OpenAI client; with API keys, the API also accepts a
  logged-in session with its CSRF header instead of the bearer key.
- A strict Content-Security-Policy (scripts and styles from this server only, no inline script); the pages write
  every model output and user text with `textContent`, and the server escapes everything it puts into HTML.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import ipaddress
import json
import secrets
import string
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import cookie_parser

from huarizo.serve.arena import AlreadyVoted, Arena, ArenaError, UnknownItem
from huarizo.serve.config import ServeConfig
from huarizo.serve.model import ServedModel

STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "huarizo_session"
SESSION_SECONDS = 12 * 3600
MAX_FORM_BYTES = 65_536
"""Largest form or JSON body a page sends (a login, a voter's name, a vote, a prompt)."""
MAX_VOTER_CHARS = 64
PAGES = ("/ui", "/arena")
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name is this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class Session:
    """A browser's session: its id, whether it logged in (or needed not), the arena voter's name, its expiry."""

    sid: str
    authed: bool
    voter: str | None
    expires: int


class Sessions:
    """Sessions as signed cookies (HMAC-SHA256 with a key drawn at start), CSRF tokens bound to them, and the API
    key check of the login form."""

    def __init__(self, api_keys: list[str]) -> None:
        self._secret = secrets.token_bytes(32)
        self._keys = [k.encode() for k in api_keys]

    @property
    def login_needed(self) -> bool:
        """Whether a key is needed (the server has API keys)."""
        return bool(self._keys)

    def new(self, *, authed: bool, voter: str | None = None) -> Session:
        """A fresh session (a new id: logging in never keeps the id a browser had before)."""
        return Session(secrets.token_urlsafe(18), authed, voter, int(time.time()) + SESSION_SECONDS)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def cookie(self, s: Session) -> str:
        """The cookie value of a session."""
        payload = _b64(json.dumps([s.sid, s.authed, s.voter, s.expires]).encode())
        return f"{payload}.{self._sign(payload)}"

    def read(self, value: str | None) -> Session | None:
        """The session of a cookie value; None when absent, forged or expired."""
        payload, _, sig = (value or "").partition(".")
        if not payload or not hmac.compare_digest(sig, self._sign(payload)):
            return None
        try:
            sid, authed, voter, expires = json.loads(_unb64(payload))
        except ValueError:
            return None
        s = Session(str(sid), bool(authed), voter if isinstance(voter, str) else None, int(expires))
        return s if s.expires > time.time() else None

    def csrf(self, s: Session) -> str:
        """The CSRF token of a session."""
        return self._sign(f"csrf:{s.sid}")

    def csrf_ok(self, s: Session, token: str | None) -> bool:
        """Whether `token` is the session's CSRF token."""
        return token is not None and hmac.compare_digest(token, self.csrf(s))

    def key_ok(self, key: str) -> bool:
        """Whether `key` is one of the server's API keys (compared in constant time)."""
        given = key.encode()
        return any(hmac.compare_digest(given, k) for k in self._keys)


def _render(name: str, **values: Any) -> str:
    """A page template from `static/` with every value HTML-escaped (values named `*_html` are trusted markup)."""
    text = (STATIC / f"{name}.html").read_text(encoding="utf-8")
    safe = {k: (str(v) if k.endswith("_html") else html.escape(str(v), quote=True)) for k, v in values.items()}
    return string.Template(text).substitute(safe)


class Web:
    """The pages, their sessions, and the arena, for one app (`mount_web`)."""

    def __init__(self, served: ServedModel, cfg: ServeConfig) -> None:
        self.served, self.cfg = served, cfg
        self.sessions = Sessions(cfg.api_keys)
        self.loopback = is_loopback(cfg.host)
        self.arena = Arena(cfg.arena, served) if cfg.arena.enabled else None

    def close(self) -> None:
        """Close the arena (its files and its folder's lock)."""
        if self.arena is not None:
            self.arena.close()

    # ---- checks ---------------------------------------------------------------------------------------------------

    def host_ok(self, host: str | None) -> bool:
        """On loopback, only a loopback `Host` (no DNS rebinding); elsewhere any."""
        if not self.loopback:
            return True
        name = urllib.parse.urlsplit(f"//{host or ''}").hostname or ""
        return name in _LOOPBACK_NAMES

    @staticmethod
    def origin_ok(origin: str | None, host: str | None) -> bool:
        """A cross-site request is refused: an `Origin` must be this server's (an absent one is a non-browser
        client, which the CSRF token still checks)."""
        return origin is None or origin == f"http://{host}" or origin == f"https://{host}"

    def session_of(self, headers: dict[str, str]) -> Session | None:
        """The valid session of a request's cookie, if any."""
        return self.sessions.read(cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE))

    def admits(self, scope: dict[str, Any]) -> bool:
        """For the API's key check: the pages check access themselves; an API request is let in without a bearer key
        when it comes from a logged-in page (its session, its CSRF header, its own origin)."""
        path = scope["path"]
        if path == "/" or path in PAGES or path.startswith(("/static/", "/arena/", "/login", "/logout")):
            return True
        if not path.startswith("/v1/"):
            return False
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        s = self.session_of(headers)
        return (
            s is not None
            and s.authed
            and self.host_ok(headers.get("host"))
            and self.origin_ok(headers.get("origin"), headers.get("host"))
            and self.sessions.csrf_ok(s, headers.get("x-csrf-token"))
        )

    # ---- responses ------------------------------------------------------------------------------------------------

    def with_session(self, response: Response, s: Session) -> Response:
        """Set the session's cookie (HTTP-only, same-site strict) on a response."""
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.cookie(s),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
        )
        return response

    def page(self, s: Session, title: str, main_html: str, script: str = "", status: int = 200) -> HTMLResponse:
        """A whole page: the layout around `main_html`, the session's CSRF token for the scripts."""
        logout = ""
        if self.sessions.login_needed and s.authed:
            logout = _render("logout", csrf=self.sessions.csrf(s))
        scripts = f'<script src="/static/{script}.js" defer></script>' if script else ""
        body = _render(
            "layout",
            title=title,
            page=title.lower().split()[0],
            csrf=self.sessions.csrf(s),
            logout_html=logout,
            main_html=main_html,
            scripts_html=scripts,
        )
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status, headers=SECURITY_HEADERS)


async def _body(request: Request) -> bytes | None:
    """A page's small body; None when over `MAX_FORM_BYTES` or not arrived within the server's `read_timeout`."""
    body = b""
    try:
        async with asyncio.timeout(request.app.state.read_timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM_BYTES:
                    return None
    except TimeoutError:
        return None
    return body


async def _form(request: Request) -> dict[str, str]:
    body = await _body(request) or b""
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}


async def _json(request: Request) -> dict[str, Any] | None:
    body = await _body(request)
    try:
        data = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _next_page(value: str | None) -> str:
    """Where to go after logging in: one of the pages, never another site."""
    return value if value in PAGES else PAGES[0]


def mount_web(app: FastAPI, served: ServedModel, cfg: ServeConfig) -> Web:
    """Add the pages to the API's app; returns the `Web` whose `admits` the API's key check asks, and whose `close`
    the app's shutdown calls."""
    web = Web(served, cfg)
    app.state.read_timeout = cfg.read_timeout
    pages = _Pages(web)
    for method, path, route in (
        ("GET", "/", pages.root),
        ("GET", "/ui", pages.ui),
        ("GET", "/arena", pages.arena_page),
        ("POST", "/arena/voter", pages.arena_voter),
        ("GET", "/arena/api/next", pages.arena_next),
        ("POST", "/arena/api/vote", pages.arena_vote),
        ("POST", "/arena/api/ask", pages.arena_ask),
        ("GET", "/login", pages.login_page),
        ("POST", "/login", pages.login),
        ("POST", "/logout", pages.logout),
        ("GET", "/static/{name}", pages.static),
    ):
        app.add_api_route(path, route, methods=[method], include_in_schema=False)
    return web


class _Pages:
    """The routes of the pages: each checks access first (the `Host`, the session, and for posts the CSRF token and
    the origin), then answers with a page, a redirect, or the arena's JSON."""

    def __init__(self, web: Web) -> None:
        self.web, self.sessions = web, web.sessions

    # ---- access ---------------------------------------------------------------------------------------------------

    def refuse_host(self, request: Request) -> Response | None:
        """The refusal of a request whose `Host` is not this server's (DNS rebinding), else None."""
        if self.web.host_ok(request.headers.get("host")):
            return None
        return HTMLResponse("unexpected Host header", status_code=400, headers=SECURITY_HEADERS)

    def page_session(self, request: Request) -> tuple[Session, bool] | Response:
        """The page's session and whether it is new (no key needed: a visit gets one); or the refusal, or the
        redirect to the login form."""
        if (bad := self.refuse_host(request)) is not None:
            return bad
        s = self.web.session_of(dict(request.headers))
        if s is not None and s.authed:
            return s, False
        if self.sessions.login_needed:
            target = urllib.parse.quote(request.url.path)
            return RedirectResponse(f"/login?next={target}", status_code=303, headers=SECURITY_HEADERS)
        return self.sessions.new(authed=True), True

    def api_session(self, request: Request, *, post: bool) -> Session | Response:
        """The session of a page's own API call, or the refusal (401 without one, 403 for a cross-site post)."""
        if (bad := self.refuse_host(request)) is not None:
            return bad
        s = self.web.session_of(dict(request.headers))
        if s is None or not s.authed:
            return _json_error(401, "not logged in (open the page again)")
        if post and not (
            self.web.origin_ok(request.headers.get("origin"), request.headers.get("host"))
            and self.sessions.csrf_ok(s, request.headers.get("x-csrf-token"))
        ):
            return _json_error(403, "cross-site request refused (missing or wrong CSRF token, or another origin)")
        return s

    def voter(
        self, request: Request, *, post: bool, missing: tuple[int, str] = (409, "no arena, or no voter name yet")
    ) -> tuple[Arena, str] | Response:
        """The arena and the voter's name of an arena call; or the refusal, `missing` (status, message) when there is
        no arena or no voter name yet."""
        s = self.api_session(request, post=post)
        if isinstance(s, Response):
            return s
        if self.web.arena is None or s.voter is None:
            return _json_error(*missing)
        return self.web.arena, s.voter

    async def form_session(self, request: Request) -> tuple[Session, dict[str, str]] | Response:
        """The session and fields of a form post; refused (403) without its CSRF token or from another origin."""
        if (bad := self.refuse_host(request)) is not None:
            return bad
        s = self.web.session_of(dict(request.headers))
        form = await _form(request)
        if (
            s is None
            or not self.web.origin_ok(request.headers.get("origin"), request.headers.get("host"))
            or not self.sessions.csrf_ok(s, form.get("csrf"))
        ):
            msg = "This form was not sent from this server's page (or your session ended): open the page again."
            return HTMLResponse(html.escape(msg), status_code=403, headers=SECURITY_HEADERS)
        return s, form

    # ---- pages ----------------------------------------------------------------------------------------------------

    async def root(self) -> Response:
        return RedirectResponse(PAGES[0], status_code=303)

    async def ui(self, request: Request) -> Response:
        got = self.page_session(request)
        if isinstance(got, Response):
            return got
        s, new = got
        served, cfg = self.web.served, self.web.cfg
        main = _render(
            "ui",
            model=served.name,
            template=served.template.name,
            context=served.context_length,
            max_tokens=cfg.default_max_tokens,
        )
        page = self.web.page(s, "Chat", main, "ui")
        return self.web.with_session(page, s) if new else page

    async def arena_page(self, request: Request) -> Response:
        got = self.page_session(request)
        if isinstance(got, Response):
            return got
        s, new = got
        arena, csrf = self.web.arena, self.sessions.csrf(s)
        if arena is None:
            page = self.web.page(s, "Arena", _render("arena_off"))
        elif s.voter is None:
            page = self.web.page(s, "Arena", _render("arena_voter", csrf=csrf, error=""))
        else:
            kind = "a fixed list of questions" if arena.fixed else "prompts you write"
            source = "live answers" if arena.live else "answer files"
            main = _render("arena", voter=s.voter, kind=kind, source=source, csrf=csrf)
            page = self.web.page(s, "Arena", main, "arena")
        return self.web.with_session(page, s) if new else page

    async def login_page(self, request: Request) -> Response:
        if (bad := self.refuse_host(request)) is not None:
            return bad
        target = _next_page(request.query_params.get("next"))
        if not self.sessions.login_needed:
            return RedirectResponse(target, status_code=303)
        s = self.web.session_of(dict(request.headers)) or self.sessions.new(authed=False)
        main = _render("login", csrf=self.sessions.csrf(s), next=target, error="")
        return self.web.with_session(self.web.page(s, "Log in", main), s)

    async def static(self, name: str) -> Response:
        path = STATIC / name
        kind = _STATIC_TYPES.get(path.suffix)
        if kind is None or "/" in name or not path.is_file():
            return _json_error(404, f"no static file {name!r}")
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return FileResponse(path, media_type=kind, headers=headers)

    # ---- forms ----------------------------------------------------------------------------------------------------

    async def arena_voter(self, request: Request) -> Response:
        got = await self.form_session(request)
        if isinstance(got, Response):
            return got
        s, form = got
        name = " ".join(form.get("voter", "").split())
        if not name or len(name) > MAX_VOTER_CHARS or not name.isprintable():
            error = f"A name of 1 to {MAX_VOTER_CHARS} printable characters, please."
            main = _render("arena_voter", csrf=self.sessions.csrf(s), error=error)
            return self.web.page(s, "Arena", main, status=400)
        return self.web.with_session(RedirectResponse("/arena", status_code=303), replace(s, voter=name))

    async def login(self, request: Request) -> Response:
        got = await self.form_session(request)
        if isinstance(got, Response):
            return got
        s, form = got
        target = _next_page(form.get("next"))
        if not self.sessions.key_ok(form.get("key", "")):
            main = _render("login", csrf=self.sessions.csrf(s), next=target, error="Wrong key.")
            return self.web.page(s, "Log in", main, status=401)
        fresh = self.sessions.new(authed=True, voter=s.voter)
        return self.web.with_session(RedirectResponse(target, status_code=303), fresh)

    async def logout(self, request: Request) -> Response:
        got = await self.form_session(request)
        if isinstance(got, Response):
            return got
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ---- the arena's calls ----------------------------------------------------------------------------------------

    async def arena_next(self, request: Request) -> Response:
        got = self.voter(request, post=False, missing=(409, "no arena, or no voter name yet (open /arena)"))
        if isinstance(got, Response):
            return got
        arena, voter = got
        try:
            item = await arena.next_item(voter)
        except ArenaError as exc:
            return _json_error(502, str(exc))
        body = {"item": item, "voted": arena.voted(voter), "total": arena.total, "free": not arena.fixed}
        return JSONResponse(body, headers=SECURITY_HEADERS)

    async def arena_vote(self, request: Request) -> Response:
        bad = 'expected {"item": ..., "vote": ...} from the arena page, with a voter name'
        got = self.voter(request, post=True, missing=(400, bad))
        if isinstance(got, Response):
            return got
        if (data := await _json(request)) is None:
            return _json_error(400, bad)
        arena, voter = got
        try:
            record = await asyncio.to_thread(arena.vote, voter, str(data.get("item")), str(data.get("vote")))
        except AlreadyVoted as exc:
            return _json_error(409, str(exc))
        except UnknownItem as exc:
            return _json_error(404, str(exc))
        except ArenaError as exc:
            return _json_error(400, str(exc))
        return JSONResponse({**record, "voted": arena.voted(voter), "total": arena.total}, headers=SECURITY_HEADERS)

    async def arena_ask(self, request: Request) -> Response:
        bad = 'expected {"prompt": "..."} from the arena page, with a voter name'
        got = self.voter(request, post=True, missing=(400, bad))
        if isinstance(got, Response):
            return got
        if (data := await _json(request)) is None or not isinstance(data.get("prompt"), str):
            return _json_error(400, bad)
        arena, voter = got
        try:
            item = await arena.ask(voter, data["prompt"])
        except UnknownItem as exc:
            return _json_error(404, str(exc))
        except ArenaError as exc:
            return _json_error(400, str(exc))
        body = {"item": item, "voted": arena.voted(voter), "total": None, "free": True}
        return JSONResponse(body, headers=SECURITY_HEADERS)
