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
from sfu.contracts import MediaPlane
from sfu.media import aiortc_hooks as hooks
from sfu.media.peer import IceRelay, MediaConfig
from sfu.media.plane import LocalMediaPlane, UdpPortUnavailable
from sfu.workers.pool import RemoteMediaPlane, WorkerSpec
from sfu.workers.worker import media_spec
from sfu.registry import RoomRegistry, utcnow
from sfu.store import SqliteStore
from signaling.ice import DEFAULT_TURN_TTL, IceServers
from signaling.server import SignalingService
from signaling.twilio.service import TwilioSignaling

from .logs import access_log_middleware, log_lifecycle
from .metrics import Metrics
from .web import WebClient, dev_tokens_enabled

__all__ = ["ServerConfig", "UdpPortUnavailable", "build_app", "build_media_plane", "media_config"]

logger = logging.getLogger(__name__)

REGISTRY = web.AppKey("registry", RoomRegistry)
SIGNALING = web.AppKey("signaling", SignalingService)
PLANE = web.AppKey("plane", MediaPlane)  # type: ignore[type-abstract]


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    ice_servers: list[RTCIceServer] = field(default_factory=list, repr=False)  # (TURN passwords)
    server_ice_relay: IceRelay = "off"  # does the server itself relay through the TURN servers
    turn_secret: str | None = field(default=None, repr=False)  # mints credentials for TURN entries without any
    turn_ttl: int = DEFAULT_TURN_TTL  # seconds a minted TURN credential is valid
    announced_address: str | None = None  # IP address the host candidates carry (1:1 NAT)
    # The one UDP port of all media (bound at startup on udp_host, or every interface). 0: one the OS
    # chooses (so servers built by tests never collide); `sfu serve` defaults to 7882.
    udp_port: int = 0
    udp_host: str | None = None  # the media socket's address (None: every interface)
    reconnect_grace: float = 5.0
    retransmission_cache: int = 512  # packets kept per video track to answer NACKs
    status_callback: str | None = None  # default StatusCallback for rooms created without one (ad-hoc rooms)
    max_participants: int | None = None  # size of rooms created on connect (default: Twilio's 50)
    database: Path | None = None  # default: data_dir / "sfu.sqlite3"
    dev_tokens: bool | None = None  # POST /dev/token: None = on only for loopback binds (web.py)
    status_callback_public_only: bool = False  # refuse callback URLs on loopback/private/link-local addresses
    # Exposure limits (README "Exposing the server"); 0 = no cap.
    drain_timeout: float = 30.0  # SIGTERM: seconds rooms may go on before their participants get 53001
    allowed_origins: list[str] = field(default_factory=list)  # browser Origins allowed on /signaling (empty: any)
    max_connections_per_ip: int = 32  # websockets not yet authenticated, per client address (429 past it)
    max_unauthenticated: int = 256  # websockets not yet authenticated, in all (the oldest is shed past it)
    auth_timeout: float = 10.0  # seconds a websocket has to send a valid connect / sync
    http_timeout: float = 15.0  # seconds an HTTP connection may take for a request head, or stay idle
    # Media worker processes (README "Workers"): 1 keeps the media in this process; N > 1 starts N
    # workers, worker i on UDP port udp_port + i (udp_port 0: each lets the OS choose).
    workers: int = 1
    # With workers > 1: transports of one room a worker takes before the room spills onto another
    # worker, its tracks piped between them (sfu.media.pipe); None: a room stays on one worker.
    room_capacity: int | None = None


def media_config(config: ServerConfig) -> MediaConfig:
    """The media settings of a server (a media worker process builds its plane with these too)."""
    return MediaConfig(
        ice_servers=list(config.ice_servers),
        ice_relay=config.server_ice_relay,
        announced_address=config.announced_address,
        retransmission_cache=config.retransmission_cache,
        # An offer made while a participant's websocket is down waits for its resume.
        negotiation_timeout=max(30.0, config.reconnect_grace + 10.0),
    )


def build_media_plane(config: ServerConfig) -> MediaPlane:
    """The media plane the room model builds its participants' transports with (started by
    the app's startup, closed by its cleanup): in this process on ``config.udp_port``, or in
    ``config.workers`` worker processes on ``udp_port + i`` (README "Workers")."""
    if config.workers > 1:
        spec = WorkerSpec(
            media=media_spec(media_config(config)), udp_port=config.udp_port, udp_host=config.udp_host,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )  # fmt: skip
        return RemoteMediaPlane(config.workers, spec, room_capacity=config.room_capacity)
    return LocalMediaPlane(media_config(config), udp_port=config.udp_port, udp_host=config.udp_host)


def build_app(
    config: ServerConfig,
    credentials: Credentials,
    clock: Callable[[], datetime] | None = None,
    call_later: Callable[[float, Callable[[], Any]], Any] | None = None,
) -> web.Application:
    """``clock`` and ``call_later`` replace wall time for the room model (tests)."""
    hooks.check_compatibility()  # refuse to start on an aiortc whose internals moved
    plane = build_media_plane(config)
    store = SqliteStore(config.database or config.data_dir / "sfu.sqlite3")
    registry = RoomRegistry(
        plane,
        credentials.account_sid,
        store=store,
        clock=clock or utcnow,
        call_later=call_later,
        ad_hoc_max_participants=config.max_participants,
    )
    signaling = SignalingService(
        registry,
        credentials,
        reconnect_grace=config.reconnect_grace,
        auth_timeout=config.auth_timeout,
        max_connections_per_ip=config.max_connections_per_ip,
        max_unauthenticated=config.max_unauthenticated,
        allowed_origins=config.allowed_origins,
        ice_servers=IceServers(list(config.ice_servers), turn_secret=config.turn_secret, turn_ttl=config.turn_ttl),
    )

    # The runner's request handlers take these (for `sfu serve` and the tests' runner alike).
    # aiohttp's keepalive_timeout (3.14) is armed when a connection opens and again after each
    # response, and closes the connection if no complete request head arrived by then: it is
    # both the idle keep-alive timeout and the request-head (slowloris) timeout. Upgraded
    # websockets are not subject to it (they have heartbeats and auth_timeout).
    handler_args = {"keepalive_timeout": config.http_timeout}
    app = web.Application(client_max_size=1 << 20, handler_args=handler_args, middlewares=[access_log_middleware()])
    log_lifecycle(registry)
    app[PLANE] = plane
    app[REGISTRY] = registry
    app[SIGNALING] = signaling
    signaling.add_routes(app)
    TwilioSignaling(signaling).add_routes(app)  # /signaling/twilio: the official twilio-video SDK
    add_rest_routes(
        app, registry, credentials, default_status_callback=config.status_callback,
        status_callback_public_only=config.status_callback_public_only,
    )  # fmt: skip
    app.router.add_get("/healthz", _health)
    Metrics(registry, signaling, credentials, plane).add_routes(app)
    WebClient(credentials, dev_tokens_enabled(config.host, config.dev_tokens)).add_routes(app)

    async def start(app: web.Application) -> None:
        await plane.start()  # (binds the media port: UdpPortUnavailable)
        await registry.start()

    async def stop(app: web.Application) -> None:
        await signaling.close()  # participants hear 53001 "server_shutdown" before rooms end (53118)
        await registry.close()

    async def cleanup(app: web.Application) -> None:
        await plane.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.on_cleanup.append(cleanup)
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
