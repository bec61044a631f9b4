"""The websocket signaling service: one Session per participant, resumable for a while
after its websocket drops (the others see it as ``reconnecting`` meanwhile)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web

from sfu.credentials import Credentials
from sfu.media.peer import NegotiationError, Offer
from sfu.participant import Participant, ParticipantError
from sfu.records import RecordsUnavailable
from sfu.registry import RoomRegistry
from sfu.room import Room
from sfu.rules import InvalidRules, validate as validate_rules

from . import protocol
from .protocol import ProtocolError
from .tokens import TokenError, VideoGrant, check_room_grant, verify_token

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
UNABLE_TO_CONNECT = 53104
STORE_FAILING = "Unable to connect to Room: the server cannot store records right now"


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
        self._grace: asyncio.TimerHandle | None = None
        self._last_offer: Offer | None = None
        self._room_handlers = {
            "participant_connected": self._on_participant,
            "participant_disconnected": self._on_participant,
            "participant_updated": self._on_participant,
        }
        for event, handler in self._room_handlers.items():
            self.room.on(event, handler)
        participant.on("offer", self._on_offer)
        participant.on("subscriptions_changed", lambda: self.send({"type": "update", "subscribed": participant.subscribed_state()}))
        participant.on("published_changed", lambda: self.send({"type": "update", "published": participant.published_state()}))
        participant.on("removed", self._on_removed)

    # --- outgoing -----------------------------------------------------------------------

    def attach(self, ws: web.WebSocketResponse) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
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
        return {
            "type": kind,
            "session": self.id,
            "room": {"sid": self.room.sid, "name": self.room.unique_name, "type": self.room.settings.type},
            "participant": {"sid": p.sid, "identity": p.identity},
            "participants": [o.describe() for o in self.room.participants.values() if o is not p],
            "published": p.published_state(),
            "subscribed": p.subscribed_state(),
            "subscribe": {"rules": p.rules},
            "options": {"heartbeat_interval": protocol.HEARTBEAT_INTERVAL, "max_message_size": protocol.MAX_MESSAGE_SIZE},
        }

    # --- room events --------------------------------------------------------------------

    def _on_participant(self, other: Participant) -> None:
        if other is not self.participant:
            self.send({"type": "update", "participants": [other.describe()]})

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

    def _on_removed(self, code: int | None, message: str | None) -> None:
        status = "completed" if code == 53118 else "disconnected"
        out: dict[str, Any] = {"type": "disconnected", "status": status}
        if code is not None:
            out.update(code=code, message=message)
        self.send(out)
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._grace is not None:
            self._grace.cancel()
        for event, handler in self._room_handlers.items():
            self.room.remove_listener(event, handler)
        self.participant.remove_all_listeners("offer")
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
            raise ProtocolError(protocol.SIGNALING_ERROR, f"Already connected: unexpected {kind}")

    async def _update(self, message: dict[str, Any]) -> None:
        # Check every part before applying any: a refused update changes nothing.
        participant_part = protocol.field(message, "participant", dict, required=False)
        pc = protocol.field(message, "peer_connection", dict, required=False)
        subscribe = protocol.field(message, "subscribe", dict, required=False)
        tracks = None
        if participant_part is not None and "tracks" in participant_part:
            tracks = protocol.tracks(participant_part["tracks"])
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

    def apply_tracks(self, tracks: list[dict[str, Any]]) -> None:
        """Make the published tracks match the client's list (publish, unpublish, mute)."""
        p = self.participant
        wanted = {t["id"]: t for t in tracks}
        for track in list(p.published.values()):
            if track.client_id not in wanted:
                self.room.unpublish(p, track)
        errors: list[ParticipantError] = []
        for entry in tracks:
            existing = p.track_by_client_id(entry["id"])
            if existing is None:
                try:
                    self.room.publish(p, entry["id"], entry["kind"], entry["name"], entry["enabled"])
                except ParticipantError as exc:
                    errors.append(exc)
            else:
                self.room.set_track_enabled(p, existing, entry["enabled"])
        if errors:
            raise ProtocolError(errors[0].code, errors[0].message)

    async def _peer_connection(self, pc: dict[str, Any]) -> None:
        description = protocol.field(pc, "description", dict, required=False)
        if description is not None:
            if description.get("type") != "answer":
                raise ProtocolError(protocol.SIGNALING_ERROR, "The server makes the offers: only an answer is accepted")
            sdp = protocol.field(description, "sdp", str)
            revision = protocol.field(description, "revision", int)
            try:
                await self.participant.peer.apply_answer(sdp, revision)
            except NegotiationError as exc:
                raise ProtocolError(exc.code, exc.message) from None
        ice = protocol.field(pc, "ice", dict, required=False)
        if ice is not None:
            candidates = protocol.field(ice, "candidates", list, required=False) or []
            for c in candidates[:64]:
                if not isinstance(c, dict):
                    raise ProtocolError(protocol.SIGNALING_ERROR, "Malformed ICE candidate")
                try:
                    await self.participant.peer.add_ice_candidate(
                        protocol.field(c, "candidate", str, required=False),
                        protocol.field(c, "sdpMid", str, required=False),
                        protocol.field(c, "sdpMLineIndex", int, required=False),
                    )
                except NegotiationError as exc:
                    raise ProtocolError(exc.code, exc.message) from None
            if protocol.field(ice, "complete", bool, required=False):
                await self.participant.peer.add_ice_candidate(None, None, None)

    # --- websocket loss -----------------------------------------------------------------

    def socket_lost(self, ws: web.WebSocketResponse) -> None:
        if self.ended or self.ws is not ws:
            return
        self.ws = None
        self._stop_writer()
        p = self.participant
        if p.status == "connected":
            p.status = "reconnecting"
            p.revision += 1
            self.room.emit("participant_updated", p)
        self._grace = asyncio.get_running_loop().call_later(
            self.service.reconnect_grace, lambda: asyncio.ensure_future(self._expire())
        )

    async def _expire(self) -> None:
        if self.ws is None and not self.ended:
            logger.info("%s did not reconnect to %s", self.participant.identity, self.room.unique_name)
            await self.room.remove(self.participant, 53001, "Signaling connection lost")

    def resume(self, ws: web.WebSocketResponse) -> None:
        """Move the session to ``ws``. The room kept reconciling the participant meanwhile
        (its media does not depend on the websocket): ``synced`` carries the current state,
        and the offer still waiting for an answer, if any, follows it."""
        self.attach(ws)
        p = self.participant
        if p.status == "reconnecting":
            p.status = "connected"
            p.revision += 1
            self.room.emit("participant_updated", p)
        self.send(self.state("synced"))
        if self.participant.peer.negotiating and self._last_offer is not None:
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
    """Accepts websockets at ``path`` and runs the protocol in ``protocol.py``."""

    def __init__(self, registry: RoomRegistry, credentials: Credentials, reconnect_grace: float = 5.0) -> None:
        self.registry = registry
        self.credentials = credentials
        self.reconnect_grace = reconnect_grace
        self.sessions: dict[str, Session] = {}

    def add_routes(self, app: web.Application, path: str = "/signaling") -> None:
        app.router.add_get(path, self.handle)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=protocol.HEARTBEAT_INTERVAL, max_msg_size=4 * protocol.MAX_MESSAGE_SIZE)
        await ws.prepare(request)
        session: Session | None = None
        budget = MessageBudget()
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                request_type: str | None = None
                try:
                    if not budget.take():
                        raise ProtocolError(protocol.SIGNALING_ERROR, "Too many messages: slow down")
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
                    await self._send_error(ws, session, exc, request_type)
                    if exc.fatal:
                        await ws.close(code=CLOSE_POLICY)
                        break
                except Exception:  # never let one participant's bad input take the server down
                    logger.exception("signaling: unexpected failure handling %s", request_type)
                    await self._send_error(ws, session, ProtocolError(protocol.SIGNALING_ERROR, "Internal signaling error"), request_type)
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
            raise ProtocolError(protocol.SIGNALING_ERROR, "Not connected: send connect first")
        grant = self._grant(message)
        if kind == "sync":
            return self._resume(ws, message, grant)
        return await self._connect(ws, message, grant)

    def _grant(self, message: dict[str, Any]) -> VideoGrant:
        token = message.get("token")
        if not isinstance(token, str):
            raise ProtocolError(20101, "Invalid Access Token", fatal=True)
        try:
            return verify_token(token, self.credentials)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None

    async def _connect(self, ws: web.WebSocketResponse, message: dict[str, Any], grant: VideoGrant) -> Session:
        name = protocol.field(message, "name", str, required=False) or grant.room
        if not name:
            raise ProtocolError(53100, "Room name is invalid", fatal=True)
        try:
            check_room_grant(grant, name)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None
        participant_part = protocol.field(message, "participant", dict, required=False) or {}
        tracks = protocol.tracks(participant_part.get("tracks", []))
        rules = None
        subscribe = protocol.field(message, "subscribe", dict, required=False)
        if subscribe is not None and "rules" in subscribe:
            try:
                rules = validate_rules(subscribe["rules"])
            except InvalidRules as exc:
                raise ProtocolError(exc.code, str(exc), fatal=True) from None
        if not self.registry.records.healthy:
            raise ProtocolError(UNABLE_TO_CONNECT, STORE_FAILING, fatal=True)
        try:
            room = self.registry.room_for_connect(name)
            participant = await room.join(grant.identity, rules)
        except ParticipantError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None
        session = Session(self, participant, grant)
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
            raise ProtocolError(UNABLE_TO_CONNECT, STORE_FAILING, fatal=True) from None
        if session.ended:  # removed while its records were stored (say, the room was ended)
            raise ProtocolError(UNABLE_TO_CONNECT, "Unable to connect to Room: the participant was removed", fatal=True)
        session.attach(ws)
        session.send(session.state("connected"))
        if participant.peer.negotiating and session._last_offer is not None:
            session.send(session._offer_message(session._last_offer))  # made while records were stored
        if refused is not None:
            session.send(protocol.error(refused.code, refused.message, "connect"))
        return session

    def _resume(self, ws: web.WebSocketResponse, message: dict[str, Any], grant: VideoGrant) -> Session:
        session = self.sessions.get(str(message.get("session")))
        if session is None or session.ended or session.participant.identity != grant.identity:
            raise ProtocolError(53002, "Unable to resume the session", fatal=True)
        try:
            check_room_grant(grant, session.room.unique_name, session.room.sid)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message, fatal=True) from None
        session.resume(ws)
        return session
