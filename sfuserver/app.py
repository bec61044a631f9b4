"""The composition root: the one place that knows sfu, signaling and rest together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCIceServer

from rest.app import add_routes as add_rest_routes
from sfu.credentials import Credentials
from sfu.media import aiortc_hooks as hooks
from sfu.media.peer import IceRelay, MediaConfig
from sfu.registry import RoomRegistry, utcnow
from sfu.store import SqliteStore
from signaling.server import SignalingService

from .logs import access_log_middleware, log_lifecycle
from .metrics import Metrics
from .web import WebClient, dev_tokens_enabled

logger = logging.getLogger(__name__)

REGISTRY = web.AppKey("registry", RoomRegistry)
SIGNALING = web.AppKey("signaling", SignalingService)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    ice_servers: list[RTCIceServer] = field(default_factory=list)
    server_ice_relay: IceRelay = "off"  # does the server itself relay through the TURN servers
    announced_address: str | None = None
    reconnect_grace: float = 5.0
    retransmission_cache: int = 512  # packets kept per video track to answer NACKs
    status_callback: str | None = None  # default StatusCallback for rooms created without one (ad-hoc rooms)
    max_participants: int | None = None  # size of rooms created on connect (default: Twilio's 50)
    database: Path | None = None  # default: data_dir / "sfu.sqlite3"
    dev_tokens: bool | None = None  # POST /dev/token: None = on only for loopback binds (web.py)
    status_callback_public_only: bool = False  # refuse callback URLs on loopback/private/link-local addresses


def build_app(
    config: ServerConfig,
    credentials: Credentials,
    clock: Callable[[], datetime] | None = None,
    call_later: Callable[[float, Callable[[], Any]], Any] | None = None,
) -> web.Application:
    """``clock`` and ``call_later`` replace wall time for the room model (tests)."""
    hooks.check_compatibility()  # refuse to start on an aiortc whose internals moved
    media = MediaConfig(
        ice_servers=list(config.ice_servers),
        ice_relay=config.server_ice_relay,
        announced_address=config.announced_address,
        retransmission_cache=config.retransmission_cache,
        # An offer made while a participant's websocket is down waits for its resume.
        negotiation_timeout=max(30.0, config.reconnect_grace + 10.0),
    )
    store = SqliteStore(config.database or config.data_dir / "sfu.sqlite3")
    registry = RoomRegistry(
        media,
        credentials.account_sid,
        store=store,
        clock=clock or utcnow,
        call_later=call_later,
        ad_hoc_max_participants=config.max_participants,
    )
    signaling = SignalingService(registry, credentials, reconnect_grace=config.reconnect_grace)

    app = web.Application(client_max_size=1 << 20, middlewares=[access_log_middleware()])
    log_lifecycle(registry)
    app[REGISTRY] = registry
    app[SIGNALING] = signaling
    signaling.add_routes(app)
    add_rest_routes(
        app, registry, credentials, default_status_callback=config.status_callback,
        status_callback_public_only=config.status_callback_public_only,
    )  # fmt: skip
    app.router.add_get("/healthz", _health)
    Metrics(registry, signaling, credentials).add_routes(app)
    WebClient(credentials, dev_tokens_enabled(config.host, config.dev_tokens)).add_routes(app)

    async def start(app: web.Application) -> None:
        await registry.start()

    async def stop(app: web.Application) -> None:
        await registry.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app


async def _health(request: web.Request) -> web.Response:
    """200 ``{"status": "ok", "store": "ok"}``; 503 with ``"store": "failing"`` while the store
    refuses writes (records then wait in memory: ``pending``)."""
    registry = request.app[REGISTRY]
    records = registry.records
    body = {"status": "ok", "rooms": len(registry.rooms), "store": "ok", "pending": records.pending}
    if not records.healthy:
        body.update(status="unhealthy", store="failing")
        return web.json_response(body, status=503)
    return web.json_response(body)
