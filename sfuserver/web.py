"""The bundled web client: static files from ``web-client/`` and the development token endpoint.

``GET /`` serves the page, ``GET /<file>`` the other files of ``web-client/`` (the JS client
module is ``/sdk.js``). ``POST /dev/token`` with JSON ``{"identity": ..., "room": ...}``
answers ``{"token": ...}``: an access token minted with the server's own API key, so the
bundled page works without an application server. It is for development only: anyone who can
reach it can join any room as anyone. It is on when the server listens on loopback, or when
the operator enables it explicitly (``sfu serve --dev-tokens``); otherwise it answers 403.
Even when it is on, it answers only requests whose ``Host`` is ``localhost``, ``127.0.0.1`` or
``[::1]`` with the port the request arrived on, and whose ``Origin`` (when sent) is that same
origin: a page elsewhere, or one reached through DNS rebinding (a name of the attacker's that
resolves to 127.0.0.1, so ``Host`` names the attacker's domain), gets 403 and no token.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from pathlib import Path

from aiohttp import web

from sfu.credentials import Credentials
from signaling.tokens import mint_token

logger = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web-client"
DEV_TOKEN_PATH = "/dev/token"
DEV_TOKEN_TTL = 3600

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
# The Host names /dev/token answers (with the server's own port): loopback only, by name.
_LOOPBACK_HOST = re.compile(r"^(localhost|127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?$", re.IGNORECASE)
# A Host safe to write into the Content-Security-Policy: a DNS name or an IP literal, a port.
_SAFE_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str | None) -> bool:
    """True for a bind address that only this machine can reach."""
    if not host:
        return False  # aiohttp binds every interface for an empty host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dev_tokens_enabled(host: str | None, flag: bool | None) -> bool:
    """The endpoint's switch: an explicit flag wins, else on exactly for loopback binds."""
    return flag if flag is not None else is_loopback(host)


class WebClient:
    """Serves ``root`` at ``/`` and, when ``dev_tokens`` is true, mints development tokens."""

    def __init__(self, credentials: Credentials, dev_tokens: bool, root: Path = WEB_ROOT) -> None:
        self.credentials = credentials
        self.dev_tokens = dev_tokens
        self.root = root.resolve()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(DEV_TOKEN_PATH, self.dev_token)
        app.router.add_get("/", self.index)
        # One path segment with an extension: never shadows /signaling, /healthz or /v1/...
        app.router.add_get(r"/{name:[A-Za-z0-9_-][A-Za-z0-9_.-]*\.[a-z]+}", self.file)

    # --- static files -------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._serve("index.html", request)

    async def file(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request.match_info["name"], request)

    def _serve(self, name: str, request: web.Request) -> web.StreamResponse:
        suffix = Path(name).suffix
        if not _FILE.match(name) or suffix not in _TYPES:
            raise web.HTTPNotFound()
        path = (self.root / name).resolve()
        if path.parent != self.root or not path.is_file():
            raise web.HTTPNotFound()
        headers = {
            "Content-Type": _TYPES[suffix],
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if suffix == ".html":
            headers["Content-Security-Policy"] = (
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                f"media-src 'self' blob: mediastream:; connect-src {_connect_sources(request.host)}; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
            )
            headers["X-Frame-Options"] = "DENY"
        else:
            # The JS client may be imported by applications' own pages on other origins.
            headers["Access-Control-Allow-Origin"] = "*"
        response = web.FileResponse(path, headers=headers)
        return response

    # --- development tokens -------------------------------------------------------------

    async def dev_token(self, request: web.Request) -> web.Response:
        if not self.dev_tokens:
            return _problem(
                403,
                "Development tokens are off on this server: it does not listen on loopback and was not "
                "started with --dev-tokens. Mint access tokens on your application's server.",
            )
        refusal = _dev_token_refusal(request)
        if refusal is not None:
            logger.warning("development token refused: %s", refusal)
            return _problem(403, refusal)
        # JSON only: a cross-site form or text/plain POST would need no CORS preflight.
        if request.content_type != "application/json":
            return _problem(415, "Send JSON: {\"identity\": ..., \"room\": ...}")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _problem(400, "The body is not valid JSON")
        if not isinstance(body, dict):
            return _problem(400, "The body must be a JSON object")
        identity = body.get("identity")
        room = body.get("room")
        if not isinstance(identity, str) or not identity.strip():
            return _problem(400, "identity is required")
        if room is not None and (not isinstance(room, str) or not room.strip()):
            return _problem(400, "room must be a non-empty string")
        try:
            token = mint_token(self.credentials, identity.strip(), room=room.strip() if room else None, ttl=DEV_TOKEN_TTL)
        except ValueError as exc:
            return _problem(400, str(exc))
        logger.info("development token minted for identity %r (room %r)", identity, room)
        return web.json_response({"token": token, "identity": identity.strip(), "room": room, "ttl": DEV_TOKEN_TTL})


def _connect_sources(host: str | None) -> str:
    """connect-src for the page: 'self' (which CSP Level 3 browsers extend to ws: and wss: of
    the same host), plus explicit ws:/wss: sources for older ones, but only for a Host that is
    a plain host name or IP literal with a port. The raw header is never echoed: `Host: x;
    script-src *` would otherwise add a directive to the policy."""
    if host and _SAFE_HOST.match(host):
        return f"'self' ws://{host} wss://{host}"
    return "'self'"


def _server_port(request: web.Request) -> int | None:
    """The local port this request arrived on (the real one, also when configured as 0)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        return sockname[1]
    return None


def _dev_token_refusal(request: web.Request) -> str | None:
    """Why a /dev/token request must be refused (DNS rebinding, another site), or None.

    Host must be localhost, 127.0.0.1 or [::1] with the port the request came in on (a
    missing port means the scheme's default), and Origin, when present, the same origin."""
    port = _server_port(request)
    hint = (
        f"Development tokens are only handed out to the page opened as http://localhost:{port or 'PORT'}/ "
        f"(or 127.0.0.1 / [::1]) on this machine. From elsewhere, paste an access token from your "
        "application's server (or `sfu token`)."
    )
    host = request.headers.get("Host", "")
    match = _LOOPBACK_HOST.match(host)
    if match is None:
        return f"Host {host[:100]!r} is not a loopback name. {hint}"
    host_port = int(match.group(2)) if match.group(2) else _DEFAULT_PORTS.get(request.scheme)
    if port is None or host_port != port:
        return f"Host {host[:100]!r} does not name this server's port. {hint}"
    origin = request.headers.get("Origin")
    if origin is not None:
        scheme = request.scheme
        expected = {f"{scheme}://{host.lower()}"}
        if match.group(2) is None or host_port == _DEFAULT_PORTS.get(scheme):
            name = match.group(1).lower()
            expected |= {f"{scheme}://{name}", f"{scheme}://{name}:{host_port}"}
        if origin.lower() not in expected:
            return f"Origin {origin[:100]!r} is not this server's own page. {hint}"
    return None


def _problem(status: int, message: str) -> web.Response:
    body = {"status": status, "message": message}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
