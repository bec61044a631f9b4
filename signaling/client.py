"""A headless Python participant with a Twilio-like API, for tests, benchmarks and bots.

    room = await connect("ws://127.0.0.1:8080/signaling", token, name="Standup",
                         tracks=[LocalVideoTrack(source), LocalDataTrack("chat")])
    room.on("track_subscribed", lambda track, publication, participant: ...)
    frame = await track.recv()          # decoded frames (default)
    await room.disconnect()

Remote media tracks yield decoded frames by default; ``connect(..., receive="packets")``
makes them yield encoded RTP packets instead, so load peers never decode.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy
from aiortc.rtp import RtpPacket
from av import AudioFrame, VideoFrame
from pyee.asyncio import AsyncIOEventEmitter

from sfu import errors
from sfu.media import aiortc_hooks as hooks

from . import ice, protocol

logger = logging.getLogger(__name__)


class SignalingError(Exception):
    """An error the server reported, with Twilio's code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- local tracks ----------------------------------------------------------------------


class LocalTrack(AsyncIOEventEmitter):
    kind = ""

    def __init__(self, name: str | None = None, id: str | None = None) -> None:
        super().__init__()
        self.id = id or str(uuid.uuid4())
        self.name = name or self.id
        self.sid: str | None = None
        self.enabled = True
        self.error: SignalingError | None = None  # why the server could not publish it (53404)
        self._participant: LocalParticipant | None = None

    def enable(self) -> None:
        self._set_enabled(True)

    def disable(self) -> None:
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        if self.enabled != enabled:
            self.enabled = enabled
            if self._participant is not None:
                self._participant._send_tracks()

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "enabled": self.enabled}


class _Gate(MediaStreamTrack):
    """Passes the source's frames through, or black / silent frames while disabled."""

    def __init__(self, owner: "LocalMediaTrack", source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._owner = owner
        self._source = source

    async def recv(self) -> Any:
        frame: Any = await self._source.recv()
        if self._owner.enabled:
            return frame
        blank: Any
        if isinstance(frame, VideoFrame):
            blank = VideoFrame(width=frame.width, height=frame.height, format="yuv420p")
            for plane, value in zip(blank.planes, (16, 128, 128)):
                plane.update(bytes([value]) * plane.buffer_size)
        else:
            blank = AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=frame.samples)
            for plane in blank.planes:
                plane.update(bytes(plane.buffer_size))
            blank.sample_rate = frame.sample_rate
        blank.pts, blank.time_base = frame.pts, frame.time_base or fractions.Fraction(1, 90000)
        return blank

    def stop(self) -> None:
        super().stop()
        self._source.stop()


class LocalMediaTrack(LocalTrack):
    def __init__(self, source: MediaStreamTrack, name: str | None = None) -> None:
        super().__init__(name)
        self.source = source
        self.media = _Gate(self, source)


class LocalAudioTrack(LocalMediaTrack):
    kind = "audio"


class LocalVideoTrack(LocalMediaTrack):
    kind = "video"


class LocalDataTrack(LocalTrack):
    """A data track; ``send`` queues (bounded) until the channel opens."""

    kind = "data"

    def __init__(
        self,
        name: str | None = None,
        ordered: bool = True,
        max_packet_life_time: int | None = None,
        max_retransmits: int | None = None,
    ) -> None:
        super().__init__(name)
        self.ordered = ordered
        self.max_packet_life_time = max_packet_life_time
        self.max_retransmits = max_retransmits
        self.channel: RTCDataChannel | None = None
        self._pending: collections.deque[str | bytes] = collections.deque(maxlen=1024)

    def send(self, message: str | bytes) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(message)
        else:
            self._pending.append(message)

    def _bind(self, channel: RTCDataChannel) -> None:
        self.channel = channel

        def flush() -> None:
            while self._pending:
                channel.send(self._pending.popleft())

        if channel.readyState == "open":
            flush()
        else:
            channel.on("open", flush)


# --- remote tracks ---------------------------------------------------------------------


class RemoteTrack(AsyncIOEventEmitter):
    def __init__(self, sid: str, kind: str, name: str) -> None:
        super().__init__()
        self.sid = sid
        self.kind = kind
        self.name = name
        self.enabled = True
        self.subscribed_at: float | None = None  # event-loop time of its track_subscribed


class RemoteMediaTrack(RemoteTrack):
    """``await recv()`` gives decoded frames, or ``aiortc.rtp.RtpPacket`` in packet mode.

    It keeps the receiver its m-section had when it was subscribed: once the server retires
    the m-section, the client gives it a fresh receiver for the next track, and this track
    ends (``recv`` raises ``MediaStreamError``) instead of showing the next one's frames."""

    def __init__(self, sid: str, kind: str, name: str, transceiver: RTCRtpTransceiver, packets: bool) -> None:
        super().__init__(sid, kind, name)
        self.transceiver = transceiver
        self.receiver = transceiver.receiver
        self.packet_mode = packets
        self.packets_received = 0
        self._packets: asyncio.Queue[RtpPacket] = asyncio.Queue(maxsize=2048)
        self._last_ssrc: int | None = None
        if packets:
            hooks.packet_receiver(self.receiver, self._on_packet)

    @property
    def media(self) -> MediaStreamTrack:
        """The aiortc track of decoded frames (frame mode only)."""
        return self.receiver.track

    def _on_packet(self, packet: RtpPacket) -> None:
        self.packets_received += 1
        self._last_ssrc = packet.ssrc
        if self._packets.full():
            self._packets.get_nowait()
        self._packets.put_nowait(packet)
        self.emit("packet", packet)

    async def recv(self) -> Any:
        if self.packet_mode:
            return await self._packets.get()
        return await self.media.recv()

    async def request_keyframe(self) -> None:
        if self._last_ssrc is not None:
            await hooks.request_keyframe(self.receiver, self._last_ssrc)


class RemoteDataTrack(RemoteTrack):
    """Emits ``message`` for every message the publisher sends."""

    def __init__(self, sid: str, name: str, channel: RTCDataChannel) -> None:
        super().__init__(sid, "data", name)
        self.channel = channel
        channel.on("message", lambda message: self.emit("message", message))


class RemoteTrackPublication:
    def __init__(self, sid: str, name: str, kind: str, enabled: bool) -> None:
        self.track_sid = sid
        self.track_name = name
        self.kind = kind
        self.enabled = enabled
        self.track: RemoteTrack | None = None

    @property
    def is_subscribed(self) -> bool:
        return self.track is not None


# --- participants ----------------------------------------------------------------------


class RemoteParticipant(AsyncIOEventEmitter):
    """Events: ``track_published``, ``track_unpublished``, ``track_subscribed``,
    ``track_unsubscribed``, ``track_enabled``, ``track_disabled`` (publication),
    ``track_subscription_failed`` (SignalingError, publication), ``reconnecting``, ``reconnected``,
    ``network_quality_level_changed`` (level, stats or None)."""

    def __init__(self, sid: str, identity: str) -> None:
        super().__init__()
        self.sid = sid
        self.identity = identity
        self.state = "connected"
        self.revision = 0
        self.tracks: dict[str, RemoteTrackPublication] = {}
        self.network_quality_level: int | None = None  # (connect(network_quality=...))
        self.network_quality_stats: dict[str, Any] | None = None


class LocalParticipant(AsyncIOEventEmitter):
    """Events: ``track_published`` (LocalTrack), ``track_publication_failed`` (SignalingError,
    LocalTrack or None): the server refused the track list (no track), or could not carry the
    track (``error.code`` 53404: its answer rejected the m-section, e.g. no common codec);
    ``network_quality_level_changed`` (level, stats or None)."""

    def __init__(self, room: "Room", sid: str, identity: str) -> None:
        super().__init__()
        self.room = room
        self.sid = sid
        self.identity = identity
        self.tracks: dict[str, LocalTrack] = {}
        self.network_quality_level: int | None = None  # (connect(network_quality=...))
        self.network_quality_stats: dict[str, Any] | None = None

    def _add(self, track: LocalTrack) -> None:
        track._participant = self
        self.tracks[track.id] = track

    async def publish_track(self, track: LocalTrack, timeout: float = 20.0) -> LocalTrack:
        """Publish and wait until the server confirms it (the track then has its SID)."""
        self._add(track)
        published = asyncio.get_running_loop().create_future()

        def on_published(t: LocalTrack) -> None:
            if t is track and not published.done():
                published.set_result(t)

        def on_failed(error: SignalingError, failed: LocalTrack | None = None) -> None:
            if not published.done() and failed in (None, track):
                published.set_exception(error)

        self.on("track_published", on_published)
        self.on("track_publication_failed", on_failed)
        try:
            self._send_tracks()
            if isinstance(track, LocalDataTrack):
                self.room._open_data_channel(track)
            return await asyncio.wait_for(published, timeout)
        finally:
            self.remove_listener("track_published", on_published)
            if on_failed in self.listeners("track_publication_failed"):
                self.remove_listener("track_publication_failed", on_failed)

    async def unpublish_track(self, track: LocalTrack) -> None:
        if self.tracks.pop(track.id, None) is None:
            return
        self._send_tracks()
        if isinstance(track, LocalDataTrack) and track.channel is not None:
            track.channel.close()
        for transceiver in self.room.pc.getTransceivers():
            if isinstance(track, LocalMediaTrack) and transceiver.sender.track is track.media:
                transceiver.sender.replaceTrack(None)

    def _send_tracks(self) -> None:
        self.room._send({"type": "update", "participant": {"tracks": [t.describe() for t in self.tracks.values()]}})


# --- the room --------------------------------------------------------------------------


class Room(AsyncIOEventEmitter):
    """Events: ``participant_connected``, ``participant_disconnected``,
    ``participant_reconnecting``, ``participant_reconnected`` (p); ``track_published``,
    ``track_unpublished``, ``track_enabled``, ``track_disabled`` (publication, p);
    ``track_subscribed``, ``track_unsubscribed`` (track, publication, p);
    ``track_subscription_failed`` (SignalingError, publication, p): the server could not
    subscribe us to the track (53404: our answer rejected its m-section); ``reconnecting``,
    ``reconnected``; ``error`` (SignalingError); ``disconnected`` (SignalingError | None);
    ``dominant_speaker_changed`` (participant or None) and ``speaking_changed`` (set of
    participant SIDs) with ``connect(dominant_speaker=True)``.

    The peer connection gathers with the ICE servers the client was given followed by the
    ones the server hands out in ``connected`` (``ice_servers`` holds them all)."""

    def __init__(
        self, url: str, token: str, ice_servers: list[RTCIceServer], packets: bool,
        ice_transport_policy: RTCIceTransportPolicy = RTCIceTransportPolicy.ALL,
    ) -> None:  # fmt: skip
        super().__init__()
        self.url = url
        self.token = token
        self.sid = ""
        self.name = ""
        self.type = ""
        self.state = "connecting"
        self.session = ""
        self.participants: dict[str, RemoteParticipant] = {}
        self.local_participant: LocalParticipant
        self.subscribe_rules: list[dict[str, Any]] = []
        self.dominant_speaker: RemoteParticipant | LocalParticipant | None = None
        self.speaking: set[str] = set()  # SIDs of the participants speaking now
        self.join_options: dict[str, Any] = {}  # dominant_speaker / network_quality, sent in connect
        self.ice_servers = list(ice_servers)
        # aiortc reads its configuration's iceServers when it makes the ICE gatherer, at the
        # first offer (which follows `connected`): the server's list joins this same list.
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=self.ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceTransportPolicy=ice_transport_policy)
        )
        self._packets = packets
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribed: dict[str, dict[str, Any]] = {}
        self._announced: set[str] = set()
        self._failed: dict[str, SignalingError] = {}  # track SID -> why we are not subscribed to it
        self._failures_announced: set[str] = set()
        self._remote_tracks: dict[str, RemoteTrack] = {}
        self._mid_role: dict[str, tuple[str, str]] = {}
        self._data_queue: list[LocalDataTrack] = []
        self._negotiated_once = False
        self._closing = False
        self.offers_answered = 0
        self.pc.on("datachannel", self._on_datachannel)
        hooks.start_when_connected(self.pc)

    # --- wire ---------------------------------------------------------------------------

    async def _open(self, name: str | None, tracks: list[LocalTrack], rules: list[dict[str, Any]] | None, timeout: float) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, heartbeat=protocol.HEARTBEAT_INTERVAL, max_msg_size=0)
        message: dict[str, Any] = {
            "type": "connect",
            "version": protocol.VERSION,
            "token": self.token,
            "participant": {"tracks": [t.describe() for t in tracks]},
        }
        if name is not None:
            message["name"] = name
        if rules is not None:
            message["subscribe"] = {"rules": rules}
        message.update(self.join_options)
        self._pending_tracks = tracks
        self._reader = asyncio.create_task(self._read(self._ws))
        await self._ws.send_str(protocol.encode(message))
        await asyncio.wait_for(asyncio.shield(self._connected), timeout)

    def _send(self, message: dict[str, Any]) -> None:
        message.setdefault("version", protocol.VERSION)
        ws = self._ws
        if ws is not None and not ws.closed:
            asyncio.ensure_future(ws.send_str(protocol.encode(message)))

    async def send_raw(self, text: str) -> None:
        """Send text as-is (tests use it to send bad input)."""
        assert self._ws is not None
        await self._ws.send_str(text)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    await self._dispatch(protocol.decode_server(msg.data))
                except Exception:
                    logger.exception("client: failed to handle a server message")
        finally:
            if ws is self._ws:
                await self._socket_closed()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("connected", "synced"):
            self._on_connected(message)
        elif kind == "update":
            await self._on_update(message)
        elif kind == "error":
            error = SignalingError(int(message.get("code", 0)), str(message.get("message", "")))
            if not self._connected.done():
                self._connected.set_exception(error)
            elif error.code == errors.SESSION_NOT_FOUND:
                await self._close(error)
                return
            elif message.get("request") in ("update", "connect"):
                self.local_participant.emit("track_publication_failed", error)
            self._emit_error(error)
        elif kind == "disconnected":
            code = message.get("code")
            await self._close(SignalingError(int(code), str(message.get("message", ""))) if code else None)

    def _emit_error(self, error: SignalingError) -> None:
        if self.listeners("error"):  # pyee raises an unhandled "error" event
            self.emit("error", error)
        else:
            logger.warning("client: server reported %s", error)

    # --- state --------------------------------------------------------------------------

    def _on_connected(self, message: dict[str, Any]) -> None:
        first = not self._connected.done()
        self.session = message["session"]
        self.sid = message["room"]["sid"]
        self.name = message["room"]["name"]
        self.type = message["room"].get("type", "")
        if first:
            self.ice_servers.extend(ice.parse(message.get("ice_servers")))  # before any gathering
            me = message["participant"]
            self.local_participant = LocalParticipant(self, me["sid"], me["identity"])
            for track in self._pending_tracks:
                self.local_participant._add(track)
                if isinstance(track, LocalDataTrack):
                    self._data_queue.append(track)
        self.subscribe_rules = message.get("subscribe", {}).get("rules", [])
        listed = {p["sid"] for p in message.get("participants", [])}
        for sid in [s for s in self.participants if s not in listed]:
            # Left while our websocket was down: `synced` lists only who is still here.
            gone = self.participants[sid]
            self._apply_participant({"sid": sid, "identity": gone.identity, "state": "disconnected", "revision": gone.revision + 1, "tracks": []})
        for p in message.get("participants", []):
            self._apply_participant(p)
        self._apply_published(message["published"])
        self._apply_subscribed(message["subscribed"])
        self._apply_speakers_and_quality(message)
        self.state = "connected"
        if first:
            self._connected.set_result(None)
        else:
            self.emit("reconnected")

    async def _on_update(self, message: dict[str, Any]) -> None:
        for p in message.get("participants", []):
            self._apply_participant(p)
        if "published" in message:
            self._apply_published(message["published"])
        if "subscribed" in message:
            self._apply_subscribed(message["subscribed"])
        if "subscribe" in message:
            self.subscribe_rules = message["subscribe"]["rules"]
            self.emit("subscribe_rules", self.subscribe_rules)
        self._apply_speakers_and_quality(message)
        pc = message.get("peer_connection")
        if pc and pc.get("description", {}).get("type") == "offer":
            await self._answer(pc["description"], pc.get("sections", []))

    def _participant(self, sid: str | None) -> RemoteParticipant | LocalParticipant | None:
        if sid is not None and sid == self.local_participant.sid:
            return self.local_participant
        return self.participants.get(sid) if sid is not None else None

    def _apply_speakers_and_quality(self, message: dict[str, Any]) -> None:
        speakers = message.get("dominant_speaker")
        if isinstance(speakers, dict):
            speaking = set(speakers.get("speaking") or [])
            if speaking != self.speaking:
                self.speaking = speaking
                self.emit("speaking_changed", set(speaking))
            dominant = self._participant(speakers.get("sid"))
            if dominant is not self.dominant_speaker:
                self.dominant_speaker = dominant
                self.emit("dominant_speaker_changed", dominant)
        for entry in message.get("network_quality") or []:
            p = self._participant(entry.get("sid"))
            if p is None:
                continue
            p.network_quality_stats = entry.get("stats")
            if entry.get("level") != p.network_quality_level:
                p.network_quality_level = entry.get("level")
                p.emit("network_quality_level_changed", p.network_quality_level, p.network_quality_stats)

    def _apply_participant(self, state: dict[str, Any]) -> None:
        sid = state["sid"]
        p = self.participants.get(sid)
        new = p is None
        if p is None:
            if state["state"] == "disconnected":
                return
            p = RemoteParticipant(sid, state["identity"])
        if state["revision"] <= p.revision:
            return
        p.revision = state["revision"]
        if new:
            self.participants[sid] = p
            self.emit("participant_connected", p)
        if state["state"] == "disconnected":
            for pub in list(p.tracks.values()):
                self._unpublished(p, pub)
            self.participants.pop(sid, None)
            p.state = "disconnected"
            self.emit("participant_disconnected", p)
            return
        if state["state"] != p.state:
            previous, p.state = p.state, state["state"]
            if p.state == "reconnecting":
                p.emit("reconnecting")
                self.emit("participant_reconnecting", p)
            elif previous == "reconnecting":
                p.emit("reconnected")
                self.emit("participant_reconnected", p)
        seen = set()
        for t in state["tracks"]:
            seen.add(t["sid"])
            known = p.tracks.get(t["sid"])
            if known is None:
                pub = p.tracks[t["sid"]] = RemoteTrackPublication(t["sid"], t["name"], t["kind"], t["enabled"])
                p.emit("track_published", pub)
                self.emit("track_published", pub, p)
                self._maybe_subscribed(t["sid"])
                self._maybe_failed(t["sid"])
            elif known.enabled != t["enabled"]:
                known.enabled = t["enabled"]
                if known.track is not None:
                    known.track.enabled = known.enabled
                event = "track_enabled" if known.enabled else "track_disabled"
                p.emit(event, known)
                self.emit(event, known, p)
        for sid_gone in [s for s in p.tracks if s not in seen]:
            self._unpublished(p, p.tracks[sid_gone])

    def _unpublished(self, p: RemoteParticipant, pub: RemoteTrackPublication) -> None:
        self._unsubscribe(pub.track_sid)
        p.tracks.pop(pub.track_sid, None)
        p.emit("track_unpublished", pub)
        self.emit("track_unpublished", pub, p)

    def _apply_published(self, published: dict[str, Any]) -> None:
        lp = self.local_participant
        for entry in published["tracks"]:
            track = lp.tracks.get(entry["id"])
            if track is None:
                continue
            track.sid = entry["sid"]
            if entry["state"] == "failed":
                if track.error is None:
                    error = entry.get("error") or {}
                    track.error = SignalingError(int(error.get("code", 0)), str(error.get("message", "")))
                    lp.emit("track_publication_failed", track.error, track)
                continue
            if entry["state"] == "ready" and not getattr(track, "_ready", False):
                track._ready = True  # type: ignore[attr-defined]
                lp.emit("track_published", track)

    def _apply_subscribed(self, subscribed: dict[str, Any]) -> None:
        current = {t["sid"]: t for t in subscribed["tracks"] if "error" not in t}
        failed = {t["sid"]: t["error"] for t in subscribed["tracks"] if "error" in t}
        for sid in [s for s in self._subscribed if s not in current]:
            self._unsubscribe(sid)
        for sid in [s for s in self._failed if s not in failed]:
            del self._failed[sid]
            self._failures_announced.discard(sid)
        for sid, error in failed.items():
            if sid not in self._failed:
                self._failed[sid] = SignalingError(int(error.get("code", 0)), str(error.get("message", "")))
                self._maybe_failed(sid)
        for sid, entry in current.items():
            if sid not in self._subscribed:
                self._subscribed[sid] = entry
                self._maybe_subscribed(sid)

    def _find_publication(self, sid: str) -> tuple[RemoteParticipant, RemoteTrackPublication] | None:
        for p in self.participants.values():
            pub = p.tracks.get(sid)
            if pub is not None:
                return p, pub
        return None

    def _maybe_subscribed(self, sid: str) -> None:
        """Announce a subscription once the server lists it and its media has arrived."""
        if sid in self._announced or sid not in self._subscribed:
            return
        track = self._remote_tracks.get(sid)
        found = self._find_publication(sid)
        if track is None or found is None:
            return
        p, pub = found
        track.name = pub.track_name
        track.enabled = pub.enabled
        pub.track = track
        self._announced.add(sid)
        track.subscribed_at = asyncio.get_running_loop().time()
        p.emit("track_subscribed", track, pub)
        self.emit("track_subscribed", track, pub, p)

    def _maybe_failed(self, sid: str) -> None:
        """Announce a failed subscription once the server lists it and we know the track."""
        error = self._failed.get(sid)
        found = self._find_publication(sid)
        if error is None or found is None or sid in self._failures_announced:
            return
        self._failures_announced.add(sid)
        p, pub = found
        p.emit("track_subscription_failed", error, pub)
        self.emit("track_subscription_failed", error, pub, p)

    def _unsubscribe(self, sid: str) -> None:
        self._subscribed.pop(sid, None)
        track = self._remote_tracks.pop(sid, None)
        if sid in self._announced:
            self._announced.discard(sid)
            found = self._find_publication(sid)
            if found is not None and track is not None:
                p, pub = found
                pub.track = None
                p.emit("track_unsubscribed", track, pub)
                self.emit("track_unsubscribed", track, pub, p)

    # --- media --------------------------------------------------------------------------

    async def _answer(self, description: dict[str, Any], sections: list[dict[str, Any]]) -> None:
        revision = description["revision"]
        previous = dict(self._mid_role)
        by_mid: dict[str, dict[str, Any]] = {}
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=description["sdp"], type="offer"))
            by_mid = {s["mid"]: s for s in sections}
            for transceiver in self.pc.getTransceivers():
                section = by_mid.get(str(transceiver.mid))
                if section is None:
                    transceiver.direction = "inactive"
                elif section["role"] == "publish":
                    track = self.local_participant.tracks.get(section.get("id", ""))
                    self._mid_role[str(transceiver.mid)] = ("publish", str(section.get("id", "")))
                    transceiver.direction = "sendonly"
                    if isinstance(track, LocalMediaTrack) and transceiver.sender.track is not track.media:
                        transceiver.sender.replaceTrack(track.media)
                else:
                    transceiver.direction = "recvonly"
                    self._media_section(transceiver, section)
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as exc:
            logger.warning("client: could not answer offer %s: %s", revision, exc)
            self._emit_error(SignalingError(errors.CLIENT_REMOTE_DESCRIPTION_FAILED, str(exc)))
            return
        self._send(
            {
                "type": "update",
                "peer_connection": {"description": {"type": "answer", "revision": revision, "sdp": self.pc.localDescription.sdp}},
            }
        )
        self.offers_answered += 1
        await self._renew_retired_sections(previous, by_mid)
        if not self._negotiated_once:
            self._negotiated_once = True
            for track in self._data_queue:
                self._open_data_channel(track)
            self._data_queue.clear()

    async def _renew_retired_sections(self, previous: dict[str, tuple[str, str]], by_mid: dict[str, dict[str, Any]]) -> None:
        """Give each m-section that stopped carrying its track a fresh receiver or sender.

        The server reuses an m-section for another track once it has been ``inactive`` for
        one negotiation. aiortc's receiver keeps the first stream's state for good (the
        registered SSRCs, jitter buffer, decoder, the track and its queue of frames), so a
        reused mid would show the old track's last frames, or nothing when the SSRC changes;
        its sender keeps one encoder, which fails on the next track's timestamps. Done after
        the answer is set, while the section is negotiated inactive: nothing starts the new
        receiver or sender until an offer reuses the mid, and then aiortc gives it a new
        track and registers the new SSRCs (see hooks.renew_receiver and hooks.renew_sender)."""
        for transceiver in self.pc.getTransceivers():
            mid = str(transceiver.mid)
            was = previous.get(mid)
            if was is None:
                continue
            role, ident = was
            section = by_mid.get(mid)
            key = "track_sid" if role == "subscribe" else "id"
            if section is not None and section.get("role") == role:
                if str(section.get(key)) != ident:
                    logger.warning("client: m-section %s switched tracks without going inactive", mid)
                continue
            if self._mid_role.get(mid) == was:
                del self._mid_role[mid]
            try:
                await (hooks.renew_receiver if role == "subscribe" else hooks.renew_sender)(transceiver)
            except Exception:
                logger.exception("client: could not renew the m-section %s", mid)

    def _media_section(self, transceiver: RTCRtpTransceiver, section: dict[str, Any]) -> None:
        sid, mid = section["track_sid"], str(transceiver.mid)
        if self._mid_role.get(mid) == ("subscribe", sid) and sid in self._remote_tracks:
            return  # the same subscription, offered again
        self._mid_role[mid] = ("subscribe", sid)
        self._remote_tracks[sid] = RemoteMediaTrack(sid, section["kind"], sid, transceiver, self._packets)
        self._maybe_subscribed(sid)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        sid = channel.label
        self._remote_tracks[sid] = RemoteDataTrack(sid, sid, channel)
        self._maybe_subscribed(sid)

    def _open_data_channel(self, track: LocalDataTrack) -> None:
        if not self._negotiated_once:
            if track not in self._data_queue:
                self._data_queue.append(track)
            return
        channel = self.pc.createDataChannel(
            track.id,
            ordered=track.ordered,
            maxPacketLifeTime=track.max_packet_life_time,
            maxRetransmits=track.max_retransmits,
        )
        track._bind(channel)

    # --- rules, leaving, reconnecting ---------------------------------------------------

    async def set_subscribe_rules(self, rules: list[dict[str, Any]], timeout: float = 10.0) -> list[dict[str, Any]]:
        """Replace this participant's subscribe rules; returns them as the server stored them."""
        done: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()

        def on_rules(value: list[dict[str, Any]]) -> None:
            if not done.done():
                done.set_result(value)

        def on_error(error: SignalingError) -> None:
            if not done.done():
                done.set_exception(error)

        self.once("subscribe_rules", on_rules)
        self.once("error", on_error)
        try:
            self._send({"type": "update", "subscribe": {"rules": rules}})
            return await asyncio.wait_for(done, timeout)
        finally:
            for event, handler in (("subscribe_rules", on_rules), ("error", on_error)):
                if handler in self.listeners(event):
                    self.remove_listener(event, handler)

    async def disconnect(self) -> None:
        if self.state == "disconnected":
            return
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                await ws.send_str(protocol.encode({"type": "disconnect", "version": protocol.VERSION}))
            except ConnectionError:
                pass
        await self._close(None)

    async def _socket_closed(self) -> None:
        if self._closing or self.state == "disconnected":
            return
        if not self._connected.done():
            self._connected.set_exception(SignalingError(errors.SIGNALING_ERROR, "Signaling connection closed before connecting"))
            await self._close(None)
            return
        self.state = "reconnecting"
        self.emit("reconnecting")
        # disconnect() may run at any await below: it closes the HTTP session under us
        # (ws_connect then raises "Session is closed"), and nothing may reopen the call.
        for attempt in range(8):
            await asyncio.sleep(min(0.1 * 2**attempt, 1.0))
            if self._closing:
                return
            try:
                assert self._http is not None
                ws = await self._http.ws_connect(self.url, heartbeat=protocol.HEARTBEAT_INTERVAL, max_msg_size=0)
            except (aiohttp.ClientError, OSError):
                continue
            except RuntimeError:
                if self._closing:
                    return
                raise
            if self._closing:
                await ws.close()
                return
            self._ws = ws
            self._reader = asyncio.create_task(self._read(ws))
            try:
                await ws.send_str(protocol.encode({"type": "sync", "version": protocol.VERSION, "token": self.token, "session": self.session}))
            except ConnectionError:
                pass  # closed again at once: its reader starts the next reconnect
            return
        if not self._closing:
            await self._close(SignalingError(errors.SIGNALING_CONNECTION_LOST, "Signaling connection lost"))

    async def _close(self, error: SignalingError | None) -> None:
        if self.state == "disconnected":
            return
        self.state = "disconnected"
        self._closing = True
        for p in list(self.participants.values()):
            for pub in list(p.tracks.values()):
                self._unsubscribe(pub.track_sid)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        await self.pc.close()
        self.emit("disconnected", error)

    async def drop_signaling(self) -> None:
        """Close the websocket without leaving (tests: the server should see a lost socket)."""
        if self._ws is not None:
            await self._ws.close(code=4000)


async def connect(
    url: str,
    token: str,
    *,
    name: str | None = None,
    tracks: Iterable[LocalTrack] = (),
    rules: list[dict[str, Any]] | None = None,
    ice_servers: list[RTCIceServer] | None = None,
    ice_transport_policy: str = "all",
    receive: str = "frames",
    timeout: float = 20.0,
    dominant_speaker: bool = False,
    network_quality: bool | dict[str, int] = False,
) -> Room:
    """Join a room; raises SignalingError with Twilio's code if the server refuses.
    ``ice_servers`` are used besides the ones the server hands out; ``ice_transport_policy``
    "relay" gathers relayed candidates only (like a browser's ``iceTransportPolicy``).
    ``dominant_speaker``: keep ``room.dominant_speaker`` (Twilio's ``dominantSpeaker``);
    ``network_quality``: True or ``{"local": 1-3, "remote": 0-3}`` keeps each participant's
    ``network_quality_level`` (Twilio's ``networkQuality`` verbosity)."""
    if receive not in ("frames", "packets"):
        raise ValueError("receive must be 'frames' or 'packets'")
    room = Room(url, token, list(ice_servers or []), receive == "packets", RTCIceTransportPolicy(ice_transport_policy))
    if dominant_speaker:
        room.join_options["dominant_speaker"] = True
    if network_quality:
        room.join_options["network_quality"] = network_quality
    try:
        await room._open(name, list(tracks), rules, timeout)
    except BaseException:
        await room._close(None)
        raise
    return room
