"""The websocket signaling service: one Session per participant, resumable for a while
after its websocket drops (the others see it as ``reconnecting`` meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp._websocket import reader_py
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.web_protocol import RequestHandler

from sfu import errors
from sfu.credentials import Credentials
from sfu.contracts import NegotiationError, Offer
from sfu.participant import Participant, ParticipantError, Subscription
from sfu.records import RecordsUnavailable
from sfu.registry import RoomRegistry
from sfu.room import Room
from sfu.rules import InvalidRules, validate as validate_rules

from . import protocol
from .ice import IceServers
from .protocol import ProtocolError
from .tokens import TokenError, VideoGrant, check_room_grant, verify_token

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
STORE_FAILING = "Unable to connect to Room: the server cannot store records right now"

CLOSE_TRY_AGAIN_LATER = 1013

SERVER_SHUTTING_DOWN = "Server is busy: it is shutting down"
SHUTDOWN_DISCONNECTED = {
    "type": "disconnected", "status": "disconnected", "code": errors.SIGNALING_CONNECTION_LOST,
    "message": "The server is shutting down", "reason": "server_shutdown",
}  # fmt: skip


def _frame_limit(size: int) -> int:
    """aiohttp's ``max_msg_size`` for messages of up to ``size`` bytes: its reader refuses a
    message of exactly ``max_msg_size`` bytes."""
    return size + 1


class _Reader(reader_py.WebSocketReader):
    """aiohttp's pure-Python websocket reader, whose limit is a plain attribute (the compiled
    reader keeps it in a C field no one can change)."""

    def set_max_msg_size(self, size: int) -> None:
        self._max_msg_size = size
        self._max_fragments = max(1024, size // 256) if size else 0  # as its __init__ derives it


def check_websocket_internals() -> None:
    """Refuse to start on an aiohttp whose internals ``AdmissionWebSocket`` relies on moved."""
    missing = [name for name in ("_message_tail", "_payload_parser", "_data_received_cb") if name not in RequestHandler.__slots__]
    if not hasattr(web.WebSocketResponse, "_post_start"):
        missing.append("WebSocketResponse._post_start")
    probe = _Reader(reader_py.WebSocketDataQueue(None, 1, loop=None), 10, compress=False, decode_text=True)  # type: ignore[arg-type]
    if getattr(probe, "_max_msg_size", None) != 10 or not hasattr(probe, "_max_fragments"):
        missing.append("reader_py.WebSocketReader._max_msg_size")
    if missing:
        raise RuntimeError(f"aiohttp's websocket internals moved ({', '.join(missing)}): see signaling/server.py AdmissionWebSocket")


class AdmissionWebSocket(web.WebSocketResponse):
    """A websocket whose message-size limit can be raised once the client authenticated.

    The limit has to bound what aiohttp *buffers*, fragmented messages included, so it must be
    the reader's own ``max_msg_size``: checking sizes after a message arrived is too late (200
    sockets each holding an unfinished 4 MiB message held 900 MB). aiohttp fixes the limit
    when the handshake completes and its compiled reader keeps it where Python cannot change
    it, so this replaces that reader, before it has seen a byte, with aiohttp's own
    pure-Python one (signaling messages are few and small: its speed does not matter).

    Internals used (aiohttp 3.14; ``check_websocket_internals`` verifies them at start):
    ``WebSocketResponse._post_start`` (installs the reader), the request handler's
    ``_message_tail`` (bytes the client sent after its handshake, fed to the reader when it is
    installed), ``_payload_parser`` and ``_data_received_cb`` (set by ``set_parser``), and the
    reader's ``_max_msg_size`` / ``_max_fragments``. tests/test_signaling_admission.py checks
    the limits end to end on real sockets.
    """

    def _post_start(self, request: Any, protocol: str | None, writer: Any) -> None:
        http = request.protocol
        tail, http._message_tail = http._message_tail, b""  # keep them from the compiled reader
        super()._post_start(request, protocol, writer)
        callback = http._data_received_cb
        http._payload_parser = None  # set_parser() installs one reader per connection
        self._reader = reader_py.WebSocketDataQueue(http, DEFAULT_CHUNK_SIZE, loop=self._loop)  # type: ignore[arg-type]  # set by prepare()
        self._parser = _Reader(self._reader, self._max_msg_size, compress=bool(self._compress), decode_text=self._decode_text)
        http._message_tail = tail
        http.set_parser(self._parser, data_received_cb=callback)

    def set_max_msg_size(self, size: int) -> None:
        self._max_msg_size = size
        if isinstance(self._parser, _Reader):
            self._parser.set_max_msg_size(size)


class Session:
    """Binds one participant to its (current) websocket and translates room events."""

    def __init__(self, service: "SignalingService", participant: Participant, grant: VideoGrant) -> None:
        self.id = secrets.token_urlsafe(18)
        self.service = service
        self.participant = participant
        self.room: Room = participant.room
        self.grant = grant
        self.ws: web.WebSocketResponse | None = None
        self.ended = False
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._last_offer: Offer | None = None
        self.dominant_speaker = False  # (connect options: Twilio's dominantSpeaker, networkQuality)
        self.quality_local = self.quality_remote = 0
        self._room_handlers: dict[str, Callable[..., Any]] = {
            "participant_connected": self._on_participant,
            "participant_disconnected": self._on_participant,
            "participant_updated": self._on_participant,
            "dominant_speaker_changed": self._on_speakers,
            "speaking_changed": self._on_speakers,
            "network_quality_changed": self._on_network_quality,
        }
        for event, handler in self._room_handlers.items():
            self.room.on(event, handler)
        participant.on("offer", self._on_offer)
        participant.on("subscriptions_changed", lambda: self.send({"type": "update", "subscribed": participant.subscribed_state()}))
        participant.on("published_changed", lambda: self.send({"type": "update", "published": participant.published_state()}))
        participant.on("removed", self._on_removed)
        participant.on("track_switched", self._on_track_switched)

    # --- outgoing -----------------------------------------------------------------------

    def attach(self, ws: web.WebSocketResponse) -> None:
        self._stop_writer()
        self.ws = ws
        self._outbox = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(ws, self._outbox))

    def send(self, message: dict[str, Any]) -> None:
        if self.ws is not None:
            self._outbox.put_nowait(message)

    async def _write_loop(self, ws: web.WebSocketResponse, outbox: asyncio.Queue[dict[str, Any] | None]) -> None:
        while True:
            message = await outbox.get()
            if message is None or ws.closed:
                break
            try:
                await ws.send_str(protocol.encode(message))
            except (ConnectionError, RuntimeError):
                break
        if message is None and not ws.closed:
            await ws.close(code=CLOSE_NORMAL)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

    def _stop_writer(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._outbox.put_nowait(None)

    def state(self, kind: str) -> dict[str, Any]:
        p = self.participant
        out = {
            "type": kind,
            "session": self.id,
            "room": {"sid": self.room.sid, "name": self.room.unique_name, "type": self.room.settings.type},
            "participant": {"sid": p.sid, "identity": p.identity},
            "participants": [o.describe() for o in self.room.participants.values() if o is not p],
            "published": p.published_state(),
            "subscribed": p.subscribed_state(),
            "subscribe": {"rules": p.rules},
            "options": {"heartbeat_interval": protocol.HEARTBEAT_INTERVAL, "max_message_size": protocol.MAX_MESSAGE_SIZE},
            "ice_servers": self.service.ice_servers.for_participant(p.identity),  # after a valid token only
        }
        if self.dominant_speaker:
            out["dominant_speaker"] = self._speakers_state()
        if self.quality_local:
            out["network_quality"] = [
                e for o in self.room.participants.values() if (e := self._quality_entry(o)) is not None
            ]
        return out

    # --- room events --------------------------------------------------------------------

    def _on_participant(self, other: Participant) -> None:
        if other is not self.participant:
            self.send({"type": "update", "participants": [other.describe()]})

    def _speakers_state(self) -> dict[str, Any]:
        return {"sid": self.room.speakers.dominant, "speaking": sorted(self.room.speakers.speaking)}

    def _on_speakers(self, _: object = None) -> None:
        if self.dominant_speaker:
            self.send({"type": "update", "dominant_speaker": self._speakers_state()})

    def _quality_entry(self, p: Participant) -> dict[str, Any] | None:
        verbosity = self.quality_local if p is self.participant else self.quality_remote
        if not verbosity or p.network_quality_level is None:
            return None
        return protocol.network_quality_entry(p.sid, p.network_quality_level, p.network_quality_stats, verbosity)

    def _on_network_quality(self, p: Participant) -> None:
        entry = self._quality_entry(p)
        if entry is not None:
            self.send({"type": "update", "network_quality": [entry]})

    def _on_offer(self, offer: Offer) -> None:
        self._last_offer = offer
        self.send(self._offer_message(offer))

    def _offer_message(self, offer: Offer) -> dict[str, Any]:
        sections = []
        for s in offer.sections:
            entry: dict[str, Any] = {"mid": s.mid, "kind": s.kind, "role": s.role, "track_sid": s.track_sid}
            if s.role == "publish":
                track = self.participant.published.get(s.track_sid)
                if track is None:
                    continue
                entry["id"] = track.client_id
            sections.append(entry)
        return {
            "type": "update",
            "peer_connection": {"description": {"type": "offer", "revision": offer.revision, "sdp": offer.sdp}, "sections": sections},
        }

    def _on_track_switched(self, sub: Subscription) -> None:
        entry: dict[str, Any] = {"sid": sub.track.sid, "switched_off": sub.switched_off}
        if sub.switch_off_reason is not None:
            entry["switch_off_reason"] = sub.switch_off_reason
        self.send({"type": "update", "switched": [entry]})

    def _on_removed(self, code: int | None, message: str | None) -> None:
        status = "completed" if code == errors.ROOM_COMPLETED else "disconnected"
        out: dict[str, Any] = {"type": "disconnected", "status": status}
        if code is not None:
            out.update(code=code, message=message)
        self.send(out)
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        for event, handler in self._room_handlers.items():
            self.room.remove_listener(event, handler)
        self.participant.remove_all_listeners("offer")
        self.participant.remove_listener("track_switched", self._on_track_switched)
        self.service.sessions.pop(self.id, None)
        self._stop_writer()

    # --- incoming -----------------------------------------------------------------------

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "update":
            await self._update(message)
        elif kind == "disconnect":
            await self.room.remove(self.participant)
        elif kind in ("connect", "sync"):
            raise ProtocolError(errors.SIGNALING_ERROR, f"Already connected: unexpected {kind}")

    async def _update(self, message: dict[str, Any]) -> None:
        # Check every part before applying any: a refused update changes nothing.
        participant_part = protocol.field(message, "participant", dict, required=False)
        pc = protocol.field(message, "peer_connection", dict, required=False)
        subscribe = protocol.field(message, "subscribe", dict, required=False)
        tracks = None
        if participant_part is not None and "tracks" in participant_part:
            tracks = protocol.tracks(participant_part["tracks"])
        hints = None
        if "track_hints" in message:
            hints = protocol.track_hints(message["track_hints"])
        rules = None
        if subscribe is not None:
            try:
                rules = validate_rules(subscribe.get("rules"))
            except InvalidRules as exc:
                raise ProtocolError(exc.code, str(exc)) from None
        if tracks is not None:
            self.apply_tracks(tracks)
        if pc is not None:
            await self._peer_connection(pc)
        if rules is not None:
            stored = self.room.set_subscribe_rules(self.participant, rules)
            self.send({"type": "update", "subscribe": {"rules": stored}})
        for hint in hints or ():  # (a hint for a track no longer subscribed is dropped)
            self.room.set_subscription_hints(
                self.participant, hint["sid"], hint["render_dimensions"], hint["switched_off"], hint["priority"]
            )

    def apply_tracks(self, tracks: list[dict[str, Any]]) -> None:
        """Make the published tracks match the client's list (publish, unpublish, mute)."""
        refused = self.room.apply_tracks(self.participant, tracks)
        if refused:
            first = next(iter(refused.values()))
            raise ProtocolError(first.code, first.message)

    async def _peer_connection(self, pc: dict[str, Any]) -> None:
        description = protocol.field(pc, "description", dict, required=False)
        if description is not None:
            if description.get("type") != "answer":
                raise ProtocolError(errors.SIGNALING_ERROR, "The server makes the offers: only an answer is accepted")
            sdp = protocol.field(description, "sdp", str)
            revision = protocol.field(description, "revision", int)
            try:
                await self.participant.transport.apply_answer(sdp, revision)
            except NegotiationError as exc:
                raise ProtocolError(exc.code, exc.message) from None
        ice = protocol.field(pc, "ice", dict, required=False)
        if ice is not None:
            candidates = protocol.field(ice, "candidates", list, required=False) or []
            for c in candidates[:64]:
                if not isinstance(c, dict):
                    raise ProtocolError(errors.SIGNALING_ERROR, "Malformed ICE candidate")
                try:
                    await self.participant.transport.add_ice_candidate(
                        protocol.field(c, "candidate", str, required=False),
                        protocol.field(c, "sdpMid", str, required=False),
                        protocol.field(c, "sdpMLineIndex", int, required=False),
                    )
                except NegotiationError as exc:
                    raise ProtocolError(exc.code, exc.message) from None
            if protocol.field(ice, "complete", bool, required=False):
                await self.participant.transport.add_ice_candidate(None, None, None)

    # --- websocket loss -----------------------------------------------------------------

    def socket_lost(self, ws: web.WebSocketResponse) -> None:
        if self.ended or self.ws is not ws:
            return
        self.ws = None
        self._stop_writer()
        self.room.set_reconnecting(self.participant, self.service.reconnect_grace)  # (the room removes it after that)

    def resume(self, ws: web.WebSocketResponse) -> None:
        """Move the session to ``ws``. The room kept reconciling the participant meanwhile
        (its media does not depend on the websocket): ``synced`` carries the current state,
        and the offer still waiting for an answer, if any, follows it."""
        self.attach(ws)
        self.room.set_connected(self.participant)
        self.send(self.state("synced"))
        if self.participant.transport.negotiating and self._last_offer is not None:
            self.send(self._offer_message(self._last_offer))


class MessageBudget:
    """A token bucket per websocket: a client flooding the server (say, toggling its tracks
    or rules in a loop, each costing a renegotiation) gets errors instead of CPU."""

    def __init__(self, rate: float = 50.0, burst: float = 200.0) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class SignalingService:
    """Accepts websockets at ``path`` and runs the protocol in ``protocol.py``.

    Admission (issue 8, "resources an unauthenticated client can hold"): until a socket sent a
    valid ``connect`` / ``sync`` it may send messages of at most
    ``protocol.MAX_UNAUTHENTICATED_MESSAGE_SIZE`` bytes and must authenticate within
    ``auth_timeout`` seconds. At most ``max_connections_per_ip`` such sockets per address (429
    before the upgrade; 0 = no cap) and ``max_unauthenticated`` in all: past that the oldest
    is shed (53006, then closed), so idle sockets never keep a participant out.
    ``allowed_origins`` (when not empty) is the list of browser origins allowed to open a
    websocket (403 before the upgrade); clients that send no ``Origin`` (not browsers) pass.
    ``ice_servers`` is what ``connected`` hands each participant (the operator's
    ``--ice-server`` list; default: none).
    """

    def __init__(
        self,
        registry: RoomRegistry,
        credentials: Credentials,
        reconnect_grace: float = 5.0,
        *,
        auth_timeout: float = 10.0,
        max_connections_per_ip: int = 0,
        max_unauthenticated: int = 0,
        allowed_origins: list[str] | None = None,
        ice_servers: IceServers | None = None,
    ) -> None:
        check_websocket_internals()
        self.ice_servers = ice_servers or IceServers([])
        self.registry = registry
        self.credentials = credentials
        self.reconnect_grace = reconnect_grace
        self.auth_timeout = auth_timeout
        self.max_connections_per_ip = max_connections_per_ip
        self.max_unauthenticated = max_unauthenticated
        self.allowed_origins = {_origin(o) for o in allowed_origins or ()}
        self.sessions: dict[str, Session] = {}
        self._unauthenticated: dict[web.WebSocketResponse, str] = {}  # oldest first, -> address
        self._per_ip: Counter[str] = Counter()
        self._authenticated: set[web.WebSocketResponse] = set()
        self._drain_deadline: float | None = None
        self._closing = False

    def add_routes(self, app: web.Application, path: str = "/signaling") -> None:
        app.router.add_get(path, self.handle)

    def connection_counts(self) -> dict[str, int]:
        """Open websockets: ``authenticated`` (sent a valid connect / sync) and not."""
        return {"authenticated": len(self._authenticated), "unauthenticated": len(self._unauthenticated)}

    # --- admission (shared with signaling.twilio) -------------------------------------------

    @contextlib.asynccontextmanager
    async def admitted(self, request: web.Request) -> AsyncIterator[tuple[AdmissionWebSocket, str]]:
        """The websocket of ``request``, upgraded if the caps and the Origin allow-list admit
        it (else an HTTP error is raised), with the caller's address. It counts as
        unauthenticated until ``authenticate``; it is forgotten when the block ends."""
        address = self._admit(request)
        ws = AdmissionWebSocket(heartbeat=protocol.HEARTBEAT_INTERVAL, max_msg_size=_frame_limit(protocol.MAX_UNAUTHENTICATED_MESSAGE_SIZE))
        self._track(ws, address)
        try:
            await ws.prepare(request)
            yield ws, address
        finally:
            self._forget(ws)

    @property
    def accepting(self) -> bool:
        """New participants may connect (the server is neither draining nor stopping)."""
        return not (self.draining or self._closing)

    def _admit(self, request: web.Request) -> str:
        """Refuse (before the upgrade) what the caps and the Origin allow-list do not admit."""
        address = request.remote or "?"
        origin = request.headers.get("Origin")
        if self.allowed_origins and origin is not None and _origin(origin) not in self.allowed_origins:
            logger.info("signaling: refused a websocket from %s: Origin %.100r is not allowed (403)", address, origin)
            raise web.HTTPForbidden(text="Origin not allowed")
        if self.max_connections_per_ip and self._per_ip[address] >= self.max_connections_per_ip:
            logger.debug("signaling: refused a websocket from %s: %d unauthenticated already (429)", address, self._per_ip[address])
            raise web.HTTPTooManyRequests(text="Too many unauthenticated connections from this address")
        if self.max_unauthenticated:
            while len(self._unauthenticated) >= self.max_unauthenticated:
                oldest = next(iter(self._unauthenticated))
                logger.debug("signaling: shedding the oldest unauthenticated websocket (from %s)", self._unauthenticated[oldest])
                self._forget(oldest)
                asyncio.ensure_future(self._close_with_error(oldest, errors.SERVER_BUSY, "Server is busy: too many connections waiting to authenticate", CLOSE_TRY_AGAIN_LATER))
        return address

    def _track(self, ws: web.WebSocketResponse, address: str) -> None:
        self._unauthenticated[ws] = address
        self._per_ip[address] += 1

    def _forget(self, ws: web.WebSocketResponse) -> None:
        address = self._unauthenticated.pop(ws, None)
        if address is not None:
            self._per_ip[address] -= 1
            if self._per_ip[address] <= 0:
                del self._per_ip[address]
        self._authenticated.discard(ws)

    def authenticate(self, ws: web.WebSocketResponse) -> None:
        """A valid token arrived: the socket leaves the caps and may send full-size messages."""
        if ws in self._unauthenticated:
            self._forget(ws)
            self._authenticated.add(ws)
            if isinstance(ws, AdmissionWebSocket):
                ws.set_max_msg_size(_frame_limit(protocol.MAX_MESSAGE_SIZE))

    async def _close_with_error(self, ws: web.WebSocketResponse, code: int, message: str, close_code: int = CLOSE_POLICY) -> None:
        with contextlib.suppress(Exception):
            if not ws.closed:
                await ws.send_str(protocol.encode(protocol.error(code, message)))
            await ws.close(code=close_code)

    # --- drain and shutdown --------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    def drain_remaining(self) -> float:
        if self._drain_deadline is None:
            return 0.0
        return max(0.0, self._drain_deadline - asyncio.get_running_loop().time())

    def start_draining(self, timeout: float) -> None:
        """Refuse new participants (53006) and tell the connected ones the call goes on for at
        most ``timeout`` seconds (``draining``)."""
        if self._drain_deadline is None:
            self._drain_deadline = asyncio.get_running_loop().time() + timeout
        for session in list(self.sessions.values()):
            session.send(self._draining_message())

    def _draining_message(self) -> dict[str, Any]:
        return {"type": "draining", "timeout": round(self.drain_remaining(), 1)}

    async def close(self) -> None:
        """The server stops: every participant still here gets ``disconnected`` 53001
        (``server_shutdown``: not 53118, the room did not end), then its socket closes; the
        rooms are ended afterwards by the registry. Unauthenticated sockets are closed."""
        self._closing = True
        sessions = list(self.sessions.values())
        for session in sessions:
            session.send(dict(SHUTDOWN_DISCONNECTED))
            session.end()
        pending = [self._close_with_error(ws, errors.SERVER_BUSY, SERVER_SHUTTING_DOWN, CLOSE_TRY_AGAIN_LATER) for ws in list(self._unauthenticated)]
        await asyncio.gather(*(s.drain(2.0) for s in sessions), *pending)

    # --- the socket ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async with self.admitted(request) as (ws, address):
            return await self._run(ws, address)

    async def _run(self, ws: web.WebSocketResponse, address: str) -> web.WebSocketResponse:
        loop = asyncio.get_running_loop()
        auth_deadline = loop.time() + self.auth_timeout
        session: Session | None = None
        budget = MessageBudget()
        try:
            while True:
                if session is None:
                    try:  # (not receive(timeout=): aiohttp restarts that at each pong)
                        async with asyncio.timeout_at(auth_deadline):
                            msg = await ws.receive()
                    except TimeoutError:
                        logger.debug("signaling: closed a websocket from %s that sent no connect in %gs", address, self.auth_timeout)
                        await self._close_with_error(ws, errors.SIGNALING_ERROR, "Timed out waiting for connect")
                        break
                else:
                    msg = await ws.receive()
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                request_type: str | None = None
                try:
                    if not budget.take():
                        raise ProtocolError(errors.SIGNALING_ERROR, "Too many messages: slow down")
                    message = protocol.decode(msg.data)
                    request_type = message["type"]
                    if request_type == "heartbeat":
                        continue
                    if session is None:
                        session = await self._open(ws, message)
                        if session is None:
                            break
                    else:
                        if session.ws is not ws:  # `sync` moved the session to another socket
                            break
                        await session.handle(message)
                        if session.ended:
                            break
                except ProtocolError as exc:
                    if session is None and exc.fatal:
                        logger.info("signaling: refused %s from %s: %d %s", request_type or "a message", address, exc.code, exc.message)
                    await self._send_error(ws, session, exc, request_type)
                    if exc.fatal:
                        await ws.close(code=CLOSE_POLICY)
                        break
                except Exception:  # never let one participant's bad input take the server down
                    logger.exception("signaling: unexpected failure handling %s", request_type)
                    await self._send_error(ws, session, ProtocolError(errors.SIGNALING_ERROR, "Internal signaling error"), request_type)
        finally:
            if session is not None:
                if session.ended:
                    await session.drain()  # let the writer flush `disconnected`
                else:
                    session.socket_lost(ws)
        return ws

    async def _send_error(self, ws: web.WebSocketResponse, session: Session | None, exc: ProtocolError, request: str | None) -> None:
        message = protocol.error(exc.code, exc.message, request)
        if session is not None and session.ws is ws:
            session.send(message)
        elif not ws.closed:
            await ws.send_str(protocol.encode(message))

    async def _open(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> Session | None:
        kind = message["type"]
        if kind == "disconnect":
            await ws.close(code=CLOSE_NORMAL)
            return None
        if kind == "update":
            raise ProtocolError(errors.SIGNALING_ERROR, "Not connected: send connect first")
        if kind == "connect" and not self.accepting:
            raise ProtocolError(errors.SERVER_BUSY, SERVER_SHUTTING_DOWN, fatal=True)
        grant = self._grant(message)
        self.authenticate(ws)
        if kind == "sync":
            return self._resume(ws, message, grant)
        return await self._connect(ws, message, grant)

    def _grant(self, message: dict[str, Any]) -> VideoGrant:
        token = message.get("token")
        if not isinstance(token, str):
            raise ProtocolError(errors.TOKEN_INVALID, "Invalid Access Token", fatal=True)
        try:
            return verify_token(token, self.credentials)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None

    async def _connect(self, ws: web.WebSocketResponse, message: dict[str, Any], grant: VideoGrant) -> Session:
        name = protocol.field(message, "name", str, required=False) or grant.room
        if not name:
            raise ProtocolError(errors.ROOM_NAME_INVALID, "Room name is invalid", fatal=True)
        try:
            check_room_grant(grant, name)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None
        participant_part = protocol.field(message, "participant", dict, required=False) or {}
        tracks = protocol.tracks(participant_part.get("tracks", []))
        dominant_speaker = bool(protocol.field(message, "dominant_speaker", bool, required=False))
        quality_local, quality_remote = protocol.quality_options(message.get("network_quality"))
        rules = None
        subscribe = protocol.field(message, "subscribe", dict, required=False)
        if subscribe is not None and "rules" in subscribe:
            try:
                rules = validate_rules(subscribe["rules"])
            except InvalidRules as exc:
                raise ProtocolError(exc.code, str(exc), fatal=True) from None
        profile = None
        if message.get("bandwidth_profile") is not None:
            try:
                profile = protocol.bandwidth_profile(message["bandwidth_profile"])
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, fatal=True) from None
        if not self.registry.records.healthy:
            raise ProtocolError(errors.UNABLE_TO_CONNECT, STORE_FAILING, fatal=True)
        try:
            room = self.registry.room_for_connect(name)
            participant = await room.join(grant.identity, rules)
        except ParticipantError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None
        if profile is not None:
            room.set_bandwidth_profile(participant, profile)
        session = Session(self, participant, grant)
        session.dominant_speaker, session.quality_local, session.quality_remote = dominant_speaker, quality_local, quality_remote
        self.sessions[session.id] = session
        refused: ProtocolError | None = None
        try:
            session.apply_tracks(tracks)  # before attach: `connected` carries the result
        except ProtocolError as exc:
            refused = exc
        try:  # `connected` promises the participant is on record: it must survive a crash
            await self.registry.records.flush()
        except RecordsUnavailable:
            session.end()
            await room.remove(participant)
            raise ProtocolError(errors.UNABLE_TO_CONNECT, STORE_FAILING, fatal=True) from None
        if session.ended:  # removed while its records were stored (say, the room was ended)
            raise ProtocolError(errors.UNABLE_TO_CONNECT, "Unable to connect to Room: the participant was removed", fatal=True)
        session.attach(ws)
        session.send(session.state("connected"))
        if participant.transport.negotiating and session._last_offer is not None:
            session.send(session._offer_message(session._last_offer))  # made while records were stored
        if refused is not None:
            session.send(protocol.error(refused.code, refused.message, "connect"))
        return session

    def _resume(self, ws: web.WebSocketResponse, message: dict[str, Any], grant: VideoGrant) -> Session:
        session = self.sessions.get(str(message.get("session")))
        if session is None or session.ended or session.participant.identity != grant.identity:
            raise ProtocolError(errors.SESSION_NOT_FOUND, "Unable to resume the session", fatal=True)
        try:
            check_room_grant(grant, session.room.unique_name, session.room.sid)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None
        session.resume(ws)
        if self.draining:
            session.send(self._draining_message())
        return session


def _origin(value: str) -> str:
    """An Origin as compared with the allow-list: lower case, no trailing slash."""
    return value.strip().rstrip("/").lower()
