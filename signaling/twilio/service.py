"""The ``/signaling/twilio`` endpoint: TCMP sockets, each carrying one RSP session.

Admission is ``SignalingService``'s, shared rather than copied: the same caps on sockets not
yet authenticated (per address and in all, counted together with ``/signaling``'s), the same
Origin allow-list, message-size limits, authentication deadline, draining refusal, token
checks, reconnect grace and ICE servers. Errors reach the SDK as RSP ``error`` inside
``msg`` after ``welcome`` (its ``TwilioError`` by code: 20101-20107 for tokens, 53xxx for
the room); the socket then stays open for the SDK's own ``disconnect`` / ``bye`` / close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import WSMsgType, web

from sfu import errors
from sfu.participant import ParticipantError
from sfu.records import RecordsUnavailable
from sfu.rules import InvalidRules, validate as validate_rules

from ..protocol import ProtocolError
from ..server import SERVER_SHUTTING_DOWN, STORE_FAILING, MessageBudget, SignalingService
from ..tokens import TokenError, VideoGrant, check_room_grant, verify_token
from . import tcmp
from .session import RspSession
from .tcmp import Connection

logger = logging.getLogger(__name__)

PATH = "/signaling/twilio"


class TwilioSignaling:
    """Serves the official twilio-video SDK beside ``signaling`` (same rooms, same limits)."""

    def __init__(self, signaling: SignalingService) -> None:
        self.signaling = signaling
        self.sessions: dict[str, RspSession] = {}

    @property
    def reconnect_grace(self) -> float:
        return self.signaling.reconnect_grace

    def add_routes(self, app: web.Application, path: str = PATH) -> None:
        app[TWILIO_SIGNALING] = self
        app.router.add_get(path, self.handle)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        """The server stops: each participant hears 53001 (the room did not end)."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.send({"type": "error", "code": errors.SIGNALING_CONNECTION_LOST, "message": SERVER_SHUTTING_DOWN}, kind="")
            session.end(close=True)
        await asyncio.gather(*(s.connection.drain(2.0) for s in sessions if s.connection is not None))

    # --- the socket ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async with self.signaling.admitted(request) as (ws, address):
            await self._run(ws, address)
            return ws

    async def _run(self, ws: web.WebSocketResponse, address: str) -> None:
        loop = asyncio.get_running_loop()
        auth_deadline = loop.time() + self.signaling.auth_timeout
        connection: Connection | None = None
        session: RspSession | None = None
        budget = MessageBudget()
        try:
            while True:
                if session is None:
                    try:
                        async with asyncio.timeout_at(auth_deadline):
                            received = await ws.receive()
                    except TimeoutError:
                        logger.debug("twilio signaling: closed a websocket from %s that joined no room in %gs", address, self.signaling.auth_timeout)
                        break
                else:
                    received = await ws.receive()
                if received.type not in (WSMsgType.TEXT, WSMsgType.BINARY) or not budget.take():
                    break
                try:
                    frame = tcmp.parse(received.data)
                except tcmp.FrameError as exc:
                    logger.debug("twilio signaling: ignored a frame from %s: %s", address, exc)
                    continue
                kind, body = frame["type"], frame.get("body")
                if kind == "hello":
                    if connection is not None:  # our welcome was lost: the SDK says hello again
                        await ws.send_str(tcmp.welcome(connection.timeout_ms))
                        continue
                    timeout = tcmp.negotiate_timeout(frame)
                    await ws.send_str(tcmp.welcome(timeout))  # first: the SDK reads nothing before it
                    connection = Connection(ws, timeout)
                if kind not in ("hello", "msg") or body is None or connection is None:
                    continue  # heartbeat, bye (the SDK closes next), or a msg before hello
                if session is not None and session.connection is not connection:
                    break  # `sync` moved the session to another socket
                try:
                    if session is None:
                        session = await self._open(ws, connection, body)
                    else:
                        await session.handle(body)
                except ProtocolError as exc:
                    logger.info("twilio signaling: refused %.16r from %s: %d %s", body.get("type"), address, exc.code, exc.message)
                    connection.send({"type": "error", "code": exc.code, "message": exc.message})
                except Exception:  # never let one participant's bad input take the server down
                    logger.exception("twilio signaling: unexpected failure handling %.16r", body.get("type"))
                    connection.send({"type": "error", "code": errors.SIGNALING_ERROR, "message": "Internal signaling error"})
        finally:
            if session is not None and connection is not None and not session.ended:
                session.socket_lost(connection)
            if connection is not None:
                if session is not None and session.ended:
                    await connection.drain()  # let `disconnected` / `error` out
                connection.stop()

    async def _open(self, ws: web.WebSocketResponse, connection: Connection, body: dict[str, Any]) -> RspSession | None:
        """The first RSP messages of a socket: ``ice`` (answered with ``iced``; ``connect``
        follows), ``connect`` or ``sync``. Anything else is ignored until one of them."""
        kind = body.get("type")
        if kind not in ("ice", "connect", "sync"):
            return None
        grant = self._grant(body)
        self.signaling.authenticate(ws)
        if kind == "ice":
            connection.send({"type": "iced", "ice_servers": self.signaling.ice_servers.for_participant(grant.identity)})
            return None
        if kind == "sync":
            return await self._resume(connection, body, grant)
        return await self._connect(connection, body, grant)

    def _grant(self, body: dict[str, Any]) -> VideoGrant:
        token = body.get("token")
        if not isinstance(token, str):
            raise ProtocolError(errors.TOKEN_INVALID, "Invalid Access Token")
        try:
            return verify_token(token, self.signaling.credentials)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message) from None

    async def _connect(self, connection: Connection, body: dict[str, Any], grant: VideoGrant) -> RspSession:
        if not self.signaling.accepting:
            raise ProtocolError(errors.SERVER_BUSY, SERVER_SHUTTING_DOWN)
        name = body.get("name") if isinstance(body.get("name"), str) and body.get("name") else grant.room
        if not name:
            raise ProtocolError(errors.ROOM_NAME_INVALID, "Room name is invalid")
        try:
            check_room_grant(grant, name)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        offer = _first_offer(body)
        rules = None
        subscribe = body.get("subscribe")
        if isinstance(subscribe, dict) and "rules" in subscribe:
            try:
                rules = validate_rules(subscribe["rules"])
            except InvalidRules:
                rules = None  # (the SDK's own rules are always valid; others fall back to all)
        registry = self.signaling.registry
        if not registry.records.healthy:
            raise ProtocolError(errors.UNABLE_TO_CONNECT, STORE_FAILING)
        try:
            room = registry.room_for_connect(name)
            participant = await room.join(grant.identity, rules, offers_first=True)
        except ParticipantError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        # (offers_first: the transport holds the room's offers until this one is applied)
        session = RspSession(self, participant, grant, offer[0])
        self.sessions[session.id] = session
        session.attach(connection)
        answer = await session.answer(offer[1], offer[2])
        if answer is None:
            session.end()
            await room.remove(participant)
            raise ProtocolError(errors.SERVER_REMOTE_DESCRIPTION_FAILED, "Unable to apply the offer")
        part = body.get("participant")
        if isinstance(part, dict):
            session.apply_participant(part)
        try:  # `connected` promises the participant is on record: it must survive a crash
            await registry.records.flush()
        except RecordsUnavailable:
            session.end()
            await room.remove(participant)
            raise ProtocolError(errors.UNABLE_TO_CONNECT, STORE_FAILING) from None
        if session.ended:
            raise ProtocolError(errors.UNABLE_TO_CONNECT, "Unable to connect to Room: the participant was removed")
        connection.send(session.room_state("connected", (offer[1], answer)))
        return session

    async def _resume(self, connection: Connection, body: dict[str, Any], grant: VideoGrant) -> RspSession:
        session = self.sessions.get(str(body.get("session")))
        if session is None or session.ended or session.participant.identity != grant.identity:
            raise ProtocolError(errors.SIGNALING_CONNECTION_LOST, "Unable to resume the session")
        try:
            check_room_grant(grant, session.room.unique_name, session.room.sid)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        await session.resume(connection, body)
        return session


TWILIO_SIGNALING = web.AppKey("twilio_signaling", TwilioSignaling)


def _first_offer(body: dict[str, Any]) -> tuple[str, int, str]:
    """(peer connection id, revision, SDP) of the offer ``connect`` carries."""
    for pc in body.get("peer_connections") or []:
        description = pc.get("description") if isinstance(pc, dict) else None
        if (
            isinstance(pc.get("id"), str) and isinstance(description, dict) and description.get("type") == "offer"
            and isinstance(description.get("revision"), int) and isinstance(description.get("sdp"), str)
        ):  # fmt: skip
            return pc["id"], description["revision"], description["sdp"]
    raise ProtocolError(errors.SIGNALING_ERROR, "connect carries no offer")
