"""RSP v2 for one participant: its messages in, the room's changes out as ``update``.

The session outlives its websocket (``sync`` moves it to a new one, as ``/signaling``'s
sessions do). It owns the revision bookkeeping of the SDK's one peer connection: the SDK
offers first and again whenever it publishes or unpublishes; the SFU offers each new
subscription with the next revision and wins glare (a client offer crossing ours is
dropped: the SDK rolls it back, answers ours and offers again).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from sfu import errors
from sfu.contracts import NegotiationError, Offer
from sfu.participant import Participant

from .. import protocol
from ..protocol import ProtocolError
from ..tokens import VideoGrant
from . import translate
from .sdp import Numbering
from .tcmp import Connection

if TYPE_CHECKING:
    from .service import TwilioSignaling

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 64  # per message, as /signaling


class RspSession:
    """One participant on the SDK's dialect, bound to its current TCMP connection."""

    def __init__(self, service: "TwilioSignaling", participant: Participant, grant: VideoGrant, pc_id: str) -> None:
        self.id = "RS" + secrets.token_hex(16)
        self.service = service
        self.participant = participant
        self.room = participant.room
        self.grant = grant
        self.pc_id = pc_id
        self.numbering = Numbering()
        self.connection: Connection | None = None
        self.ended = False
        self._client_revision = 0  # the SDK's own participant.revision
        self._refused: dict[str, tuple[int, str]] = {}  # client track id -> why the room refused it
        self._ice_added: dict[str, int] = {}  # client ufrag -> candidates added
        self._ice_complete: set[str] = set()
        self._last_offer: Offer | None = None
        self._room_handlers = {
            "participant_connected": self._on_participant,
            "participant_disconnected": self._on_participant,
            "participant_updated": self._on_participant,
        }
        for event, handler in self._room_handlers.items():
            self.room.on(event, handler)
        participant.on("offer", self._on_offer)
        participant.on("subscriptions_changed", lambda: self.send({"subscribed": translate.subscribed(participant)}))
        participant.on("published_changed", lambda: self.send({"published": self.published()}))
        participant.on("removed", self._on_removed)

    # --- outgoing -----------------------------------------------------------------------

    def attach(self, connection: Connection) -> None:
        if self.connection is not None and self.connection is not connection:
            self.connection.stop()
        self.connection = connection

    def send(self, update: dict[str, Any], kind: str = "update") -> None:
        """An RSP message (``update`` unless ``kind`` says otherwise); dropped while no
        socket is attached (``synced`` then carries the whole state)."""
        if self.connection is not None:
            self.connection.send({"type": kind, **update} if kind else update)

    def published(self) -> dict[str, Any]:
        state = translate.published(self.participant)
        state["tracks"] += [
            {"id": client_id, "state": "failed", "error": {"code": code, "message": message}}
            for client_id, (code, message) in self._refused.items()
        ]
        return state

    def room_state(self, kind: str, answer: tuple[int, str] | None = None) -> dict[str, Any]:
        """``connected`` / ``synced``: the room, ``published`` / ``subscribed``, and the peer
        connection: the answer to the SDK's offer if given, else our offer still waiting."""
        state = translate.room_state(kind, self.id, self.participant)
        state["published"] = self.published()
        pc: dict[str, Any] = {"id": self.pc_id}
        transport = translate.transport(self.participant)
        if answer is not None:
            pc["description"] = {"type": "answer", "revision": answer[0], "sdp": answer[1]}
            ice = translate.ice(answer[1])
            if ice is not None:
                pc["ice"] = ice
        elif transport.negotiating and self._last_offer is not None:
            pc["description"] = self._offer_description(self._last_offer)
        state["peer_connections"] = [pc]
        return state

    def _offer_description(self, offer: Offer) -> dict[str, Any]:
        return {"type": "offer", "revision": offer.revision, "sdp": self.numbering.align(offer.sdp)}

    # --- room events --------------------------------------------------------------------

    def _on_participant(self, other: Participant) -> None:
        if other is not self.participant:
            self.send({"participants": [translate.participant_state(other)]})

    def _on_offer(self, offer: Offer) -> None:
        self._last_offer = offer
        self.send({"peer_connections": [{"id": self.pc_id, "description": self._offer_description(offer)}]})

    def _on_removed(self, code: int | None, message: str | None) -> None:
        if code is None:
            self.send({"type": "disconnected"}, kind="")
        elif code == errors.ROOM_COMPLETED:
            self.send({"type": "disconnected", "status": "completed"}, kind="")
        else:  # (duplicate identity, media failure, reconnect given up...): the SDK's TwilioError
            self.send({"type": "error", "code": code, "message": message or ""}, kind="")
        self.end(close=True)

    def end(self, close: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        for event, handler in self._room_handlers.items():
            self.room.remove_listener(event, handler)
        self.participant.remove_listener("offer", self._on_offer)
        self.service.sessions.pop(self.id, None)
        if self.connection is not None:
            self.connection.stop(close=close)

    # --- incoming -----------------------------------------------------------------------

    async def handle(self, body: dict[str, Any]) -> None:
        kind = body.get("type")
        if kind == "update":
            await self.update(body)
        elif kind == "disconnect":
            await self.room.remove(self.participant)
        else:
            logger.debug("twilio signaling: %s ignored a %.32r message", self.participant.identity, kind)

    async def update(self, body: dict[str, Any]) -> None:
        """``participant`` (tracks) first, then ``peer_connections`` (offers, answers, ICE)."""
        part = body.get("participant")
        if isinstance(part, dict):
            self.apply_participant(part)
        connections = body.get("peer_connections")
        for pc in connections if isinstance(connections, list) else []:
            if isinstance(pc, dict):
                await self.peer_connection(pc)

    def apply_participant(self, part: dict[str, Any]) -> None:
        """Make the published tracks match the SDK's list (it re-sends the whole list, with
        a higher revision, on every change). A track the room refuses is reported as
        ``failed`` in ``published`` (the SDK's ``trackPublicationFailed``), not as an error,
        which would end the SDK's room."""
        revision = part.get("revision")
        if isinstance(revision, int) and not isinstance(revision, bool):
            if revision <= self._client_revision:
                return
            self._client_revision = revision
        try:
            tracks = protocol.tracks(part.get("tracks", []))
        except ProtocolError as exc:
            logger.info("twilio signaling: %s sent a track list the server refuses: %d %s", self.participant.identity, exc.code, exc.message)
            return
        wanted = {t["id"] for t in tracks}
        self._refused = {k: v for k, v in self._refused.items() if k in wanted}
        refused = self.room.apply_tracks(self.participant, tracks, offered=True, skip=self._refused)
        if refused:
            self._refused.update((client_id, (exc.code, exc.message)) for client_id, exc in refused.items())
            self.send({"published": self.published()})

    async def peer_connection(self, pc: dict[str, Any]) -> None:
        if pc.get("id") != self.pc_id:
            logger.debug("twilio signaling: %s: ignoring peer connection %.64r (one per participant)", self.participant.identity, pc.get("id"))
            return
        description = pc.get("description")
        if isinstance(description, dict):
            await self._description(description)
        ice = pc.get("ice")
        if isinstance(ice, dict):
            await self._ice(ice)

    async def _description(self, description: dict[str, Any]) -> None:
        kind, revision, sdp = description.get("type"), description.get("revision"), description.get("sdp")
        transport = translate.transport(self.participant)
        if kind == "close":
            await self.room.remove(self.participant, errors.MEDIA_CONNECTION_FAILED, "Media connection failed: the client closed its peer connection")
            return
        if not isinstance(revision, int) or not isinstance(sdp, str):
            return
        if kind == "offer":
            answer = await self.answer(revision, sdp)
            if answer is not None:
                self.send({"peer_connections": [{"id": self.pc_id, "description": {"type": "answer", "revision": revision, "sdp": answer}}]})
        elif kind == "answer":
            try:
                await transport.apply_answer(sdp, revision)
            except NegotiationError as exc:
                logger.info("twilio signaling: %s: answer %d not applied: %s", self.participant.identity, revision, exc.message)

    async def answer(self, revision: int, sdp: str) -> str | None:
        """Our answer to the SDK's offer, or None when it crossed ours (or failed)."""
        self.numbering.learn(sdp)
        try:
            return await translate.transport(self.participant).apply_offer(sdp, revision)
        except NegotiationError as exc:
            logger.info("twilio signaling: %s: offer %d dropped: %s", self.participant.identity, revision, exc.message)
            return None

    async def _ice(self, ice: dict[str, Any]) -> None:
        ufrag, candidates = ice.get("ufrag"), ice.get("candidates")
        if not isinstance(ufrag, str) or not isinstance(candidates, list):
            return
        transport = translate.transport(self.participant)
        added = self._ice_added.get(ufrag, 0)
        for candidate in candidates[added:added + MAX_CANDIDATES]:
            if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate"), str):
                continue
            mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
            try:
                await transport.add_ice_candidate(
                    candidate["candidate"], mid if isinstance(mid, str) else None, index if isinstance(index, int) else None
                )
            except NegotiationError as exc:
                logger.debug("twilio signaling: %s: candidate refused: %s", self.participant.identity, exc.message)
        self._ice_added[ufrag] = max(added, len(candidates))
        if ice.get("complete") is True and ufrag not in self._ice_complete:
            self._ice_complete.add(ufrag)
            await transport.add_ice_candidate(None, None, None)

    # --- websocket loss and resume ------------------------------------------------------

    def socket_lost(self, connection: Connection) -> None:
        """The socket dropped without ``disconnect``: the others see ``reconnecting`` until
        a ``sync`` comes within the grace, else the participant leaves (53001)."""
        if self.ended or self.connection is not connection:
            return
        self.connection = None
        self.room.set_reconnecting(self.participant, self.service.reconnect_grace)  # (the room removes it after that)

    async def resume(self, connection: Connection, body: dict[str, Any]) -> None:
        """``sync``: move to ``connection`` and send ``synced``, a full snapshot answering the
        SDK's outstanding offer (or applying its answer to ours) from ``body``."""
        self.attach(connection)
        self.room.set_connected(self.participant)
        part = body.get("participant")
        if isinstance(part, dict):
            self.apply_participant(part)
        answer: tuple[int, str] | None = None
        for pc in body.get("peer_connections") or []:
            description = pc.get("description") if isinstance(pc, dict) and pc.get("id") == self.pc_id else None
            if not isinstance(description, dict):
                continue
            revision, sdp = description.get("revision"), description.get("sdp")
            if description.get("type") == "offer" and isinstance(revision, int) and isinstance(sdp, str):
                answered = await self.answer(revision, sdp)
                answer = (revision, answered) if answered is not None else None
            elif description.get("type") == "answer":
                await self._description(description)
        self.send(self.room_state("synced", answer), kind="")
