"""The composition root: the one place that knows sfu, signaling and rest together."""

from __future__ import annotations

import errno
import ipaddress
import asyncio
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
from sfu.media import overload
from sfu.media.peer import IceRelay, MediaConfig
from sfu.media.udpmux import UdpMux
from sfu.registry import RoomRegistry, utcnow
from sfu.store import SqliteStore
from signaling.ice import DEFAULT_TURN_TTL, IceServers
from signaling.server import SignalingService
from signaling.twilio.service import TwilioSignaling

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
    app[REGISTRY] = registry
    app[SIGNALING] = signaling
    signaling.add_routes(app)
    TwilioSignaling(signaling).add_routes(app)  # /signaling/twilio: the official twilio-video SDK
    add_rest_routes(
        app, registry, credentials, default_status_callback=config.status_callback,
        status_callback_public_only=config.status_callback_public_only,
    )  # fmt: skip
    app.router.add_get("/healthz", _health)
    Metrics(registry, signaling, credentials).add_routes(app)
    WebClient(credentials, dev_tokens_enabled(config.host, config.dev_tokens)).add_routes(app)

    async def start(app: web.Application) -> None:
        mux = media.udp_mux = _open_udp_mux(config)
        # The overload guard sheds video only when the media input piles up, not on bursts.
        overload.guard_for(asyncio.get_running_loop()).backlog = lambda: mux.saturation
        await registry.start()

    async def stop(app: web.Application) -> None:
        await signaling.close()  # participants hear 53001 "server_shutdown" before rooms end (53118)
        await registry.close()

    async def cleanup(app: web.Application) -> None:
        if media.udp_mux is not None:
            media.udp_mux.close()
            media.udp_mux = None

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.on_cleanup.append(cleanup)
    return app


class UdpPortUnavailable(Exception):
    """The media UDP port could not be bound."""


def _open_udp_mux(config: ServerConfig) -> UdpMux:
    announced = config.announced_address
    host = config.udp_host or ("::" if announced and ipaddress.ip_address(announced).version == 6 else "0.0.0.0")
    try:
        mux = UdpMux.bind(config.udp_port, host)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise UdpPortUnavailable(f"cannot bind UDP port {config.udp_port} for media: {reason}") from None
    logger.info("media on UDP port %d (one socket for every participant)", mux.port)
    return mux


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
