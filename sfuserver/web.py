"""The bundled web client: static files from ``web-client/`` and the development token endpoint.

``GET /`` serves the page, ``GET /<file>`` the other files of ``web-client/`` (the JS client
module is ``/sdk.js``). ``POST /dev/token`` with JSON ``{"identity": ..., "room": ...}``
answers ``{"token": ...}``: an access token minted with the server's own API key, so the
bundled page works without an application server. It is for development only: anyone who can
reach it can join any room as anyone. It is on when the server listens on loopback, or when
the operator enables it explicitly (``sfu serve --dev-tokens``); otherwise it answers 403.
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
                f"media-src 'self' blob: mediastream:; connect-src 'self' ws://{request.host} wss://{request.host}; "
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


def _problem(status: int, message: str) -> web.Response:
    body = {"status": status, "message": message}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
