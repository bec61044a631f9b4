"""How a load participant joins each target (runs inside the worker processes).

Every target gets the same peers: aiortc peer connections whose publishers send the
pre-encoded clip (``PacketSource``) and whose inbound RTP is counted by the tap in
:mod:`benchmarks.peers`. Only signaling differs:

* ``sfu``: the project's own client (``signaling.client``), one peer connection per
  participant that publishes and subscribes; the server offers, the client answers.
* ``janus``: Janus's HTTP API and its videoroom plugin. One Janus session per worker, one
  handle per peer connection; a publisher joins and configures with its offer; a
  subscriber joins with the feeds it wants, gets Janus's offer and starts with its answer.
* ``relay``: the MediaRelay baseline's own trivial HTTP signaling
  (:mod:`benchmarks.baselines.relay`): publishers post an offer, subscribers get an offer
  with every other publisher's tracks and post their answer.
* ``floor``: no peer connection at all (:mod:`benchmarks.baselines.floor`): each leg is a
  plain UDP socket on the test interface that registers with one datagram; the publisher
  sends the same clip in plain RTP, subscribers count it with the same tap code.

Both baselines use two peer connections for a participant that publishes and subscribes,
which is how Janus's videoroom is used by browsers too.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any, cast

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy

from .media import Clip, PacketSource
from .peers import Participant


def make_client(target: dict[str, Any], clip: Clip) -> "Client":
    kind = target["kind"]
    if kind == "sfu":
        return SfuClient(target, clip)
    if kind == "janus":
        return JanusClient(target, clip)
    if kind == "relay":
        return RelayClient(target, clip)
    if kind == "floor":
        return FloorClient(target, clip)
    raise ValueError(f"unknown target {kind}")


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def packet_receivers(pc: RTCPeerConnection) -> None:
    """Receivers that start no decoder thread and no RTCP loop, as the project's client does
    in packet mode: the same subscriber behaviour for every target (RTP is taken earlier,
    by the tap in benchmarks.peers)."""
    from sfu.media import aiortc_hooks

    for transceiver in pc.getTransceivers():
        aiortc_hooks.packet_receiver(transceiver.receiver, lambda packet: None)


async def wait_connected(leg: Any, timeout: float = 30.0) -> None:
    if leg.t_connected is None:
        await asyncio.wait_for(leg.connected.wait(), timeout)


class Client:
    two_legs = True

    def __init__(self, target: dict[str, Any], clip: Clip) -> None:
        self.target = target
        self.clip = clip

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def takes_part(self, p: Participant, phase: str) -> bool:
        """Whether ``p`` does something in ``phase`` ("publish" comes before "subscribe")."""
        return p.spec.publish if phase == "publish" else p.spec.subscribe

    def sources(self, p: Participant) -> list[PacketSource]:
        if not p.sources:
            p.sources = [PacketSource("audio", self.clip, p.spec.salt), PacketSource("video", self.clip, p.spec.salt)]
        return p.sources

    async def join(self, p: Participant, phase: str) -> None:
        raise NotImplementedError

    async def leave(self, p: Participant) -> None:
        for leg in p.legs:
            if leg.pc is not None:
                await leg.pc.close()


class SfuClient(Client):
    two_legs = False

    def takes_part(self, p: Participant, phase: str) -> bool:
        # one connection does both: publishers join in the publish phase and are then
        # subscribed to everyone automatically; receive-only participants join later
        return p.spec.publish if phase == "publish" else (p.spec.subscribe and not p.spec.publish)

    async def join(self, p: Participant, phase: str) -> None:
        from signaling.client import LocalAudioTrack, LocalVideoTrack, Room
        from signaling.tokens import mint_token

        spec = p.spec
        leg = p.leg("main")
        tracks: list[Any] = []
        if spec.publish:
            audio, video = self.sources(p)
            tracks = [LocalAudioTrack(audio.track, name="audio"), LocalVideoTrack(video.track, name="video")]
        token = mint_token(self.target["credentials"], spec.identity, room=spec.room)
        rules = None if spec.subscribe else [{"type": "exclude", "all": True}]
        room = Room(self.target["url"], token, [], True)
        p.handle = room
        leg.attach(room.pc)
        await room._open(spec.room, tracks, rules, 30.0)
        await wait_connected(leg)

    async def leave(self, p: Participant) -> None:
        if p.handle is not None:
            await p.handle.disconnect()


class JanusClient(Client):
    """Janus videoroom over the plain HTTP API (long polling for events)."""

    def __init__(self, target: dict[str, Any], clip: Clip) -> None:
        super().__init__(target, clip)
        self.base = target["url"]
        self.rooms: dict[str, int] = target["rooms"]
        self.session_id = 0
        self.http: aiohttp.ClientSession | None = None
        self.events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self.poller: asyncio.Task[None] | None = None
        self.tx = itertools.count(1)

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90))
        reply = await self._post(self.base, {"janus": "create"})
        self.session_id = reply["data"]["id"]
        self.poller = asyncio.ensure_future(self._poll())

    async def stop(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
        if self.http is not None:
            try:
                await self._post(f"{self.base}/{self.session_id}", {"janus": "destroy"})
            except Exception:
                pass
            await self.http.close()

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        body = dict(body, transaction=f"t{next(self.tx)}")
        async with self.http.post(url, json=body) as response:
            reply = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus: {reply['error']}")
        return reply

    async def _poll(self) -> None:
        assert self.http is not None
        url = f"{self.base}/{self.session_id}?maxev=50"
        while True:
            try:
                async with self.http.get(url) as response:
                    reply = await response.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)
                continue
            for event in reply if isinstance(reply, list) else [reply]:
                sender = event.get("sender")
                if sender is not None:
                    self.events.setdefault(sender, asyncio.Queue()).put_nowait(event)

    async def _attach(self) -> int:
        reply = await self._post(f"{self.base}/{self.session_id}", {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        handle = reply["data"]["id"]
        self.events.setdefault(handle, asyncio.Queue())
        return handle

    async def _message(self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        return await self._post(f"{self.base}/{self.session_id}/{handle}", message)

    async def _event(self, handle: int, want: str) -> dict[str, Any]:
        """The next plugin event on ``handle`` carrying ``want`` ("jsep" or a videoroom type)."""
        queue = self.events[handle]
        while True:
            event = await queue.get()
            data = event.get("plugindata", {}).get("data", {})
            if "error" in data:
                raise RuntimeError(f"janus videoroom: {data['error']}")
            if want == "jsep" and "jsep" in event:
                return event
            if data.get("videoroom") == want:
                return event

    async def join(self, p: Participant, phase: str) -> None:
        spec = p.spec
        room = self.rooms[spec.room]
        if phase == "publish":
            leg = p.leg("publish")
            handle = await self._attach()
            pc = new_pc()
            leg.attach(pc)
            for source in self.sources(p):
                pc.addTrack(source.track)
            await pc.setLocalDescription(await pc.createOffer())
            body = {"request": "joinandconfigure", "room": room, "ptype": "publisher", "display": spec.identity, "audio": True, "video": True}
            await self._message(handle, body, {"type": "offer", "sdp": pc.localDescription.sdp})
            event = await self._event(handle, "jsep")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=event["jsep"]["sdp"], type=event["jsep"]["type"]))
            await wait_connected(leg)
            return
        reply = await self._message(await self._listing_handle(), {"request": "listparticipants", "room": room})
        feeds = [
            f["id"]
            for f in reply["plugindata"]["data"].get("participants", [])
            if f.get("publisher") and f.get("display") != spec.identity
        ]
        if not feeds:
            raise RuntimeError("no publisher to subscribe to")
        leg = p.leg("subscribe")
        handle = await self._attach()
        body = {"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": f} for f in feeds]}
        await self._message(handle, body)
        event = await self._event(handle, "jsep")
        pc = new_pc()
        leg.attach(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=event["jsep"]["sdp"], type="offer"))
        packet_receivers(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        await self._message(handle, {"request": "start", "room": room}, {"type": "answer", "sdp": pc.localDescription.sdp})
        await wait_connected(leg)

    _listing: int | None = None

    async def _listing_handle(self) -> int:
        if self._listing is None:
            self._listing = await self._attach()
        return self._listing


class RelayClient(Client):
    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90))

    async def stop(self) -> None:
        await self.http.close()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.target["url"] + path, json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"relay {path}: {response.status} {await response.text()}")
            return await response.json()

    async def join(self, p: Participant, phase: str) -> None:
        spec = p.spec
        if phase == "publish":
            leg = p.leg("publish")
            pc = new_pc()
            leg.attach(pc)
            for source in self.sources(p):
                pc.addTrack(source.track)
            await pc.setLocalDescription(await pc.createOffer())
            reply = await self._post("/publish", {"room": spec.room, "identity": spec.identity, "sdp": pc.localDescription.sdp})
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
            await wait_connected(leg)
            return
        leg = p.leg("subscribe")
        reply = await self._post("/subscribe", {"room": spec.room, "identity": spec.identity})
        pc = new_pc()
        leg.attach(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="offer"))
        packet_receivers(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        await self._post("/answer", {"id": reply["id"], "sdp": pc.localDescription.sdp})
        await wait_connected(leg)



class FloorEndpoint(asyncio.DatagramProtocol):
    """One plain UDP socket of a floor participant: RTP in goes to its leg, ``OK`` answers
    a registration, ``KEY`` asks the publisher for a keyframe."""

    def __init__(self, leg: Any) -> None:
        self.leg = leg
        self.transport: asyncio.DatagramTransport | None = None
        self.ok = asyncio.Event()
        self.on_key: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data and data[0] >= 0x80:
            self.leg.on_rtp(data)
        elif data == b"OK":
            self.ok.set()
        elif data == b"KEY" and self.on_key is not None:
            self.on_key()

    def send(self, data: bytes) -> bool:
        assert self.transport is not None
        self.transport.sendto(data)
        return True

    async def register(self, message: str, timeout: float = 30.0) -> None:
        """Send ``message`` until the floor answers OK (UDP: a datagram may be lost)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.ok.is_set():
            self.send(message.encode())
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"floor did not answer {message!r}")
            try:
                await asyncio.wait_for(self.ok.wait(), min(0.5, left))
            except asyncio.TimeoutError:
                pass


class FloorClient(Client):
    """The floor target: one plain UDP socket per leg, no ICE, DTLS or SRTP."""

    PAYLOAD_TYPES = {"audio": 111, "video": 96}
    MID_ID, LEVEL_ID = 1, 2  # header extension ids, as a browser's offer numbers them
    SRTP_TAG = bytes(16)  # stands in for the AES-GCM authentication tag of an SRTP packet

    async def _open(self, leg: Any) -> FloorEndpoint:
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: FloorEndpoint(leg), local_addr=(self.target["host"], 0), remote_addr=(self.target["host"], self.target["port"]))
        return endpoint

    async def join(self, p: Participant, phase: str) -> None:
        spec = p.spec
        legs = p.handle = p.handle or []
        if phase == "publish":
            leg = p.leg("publish")
            endpoint = await self._open(leg)
            legs.append(endpoint)
            await endpoint.register(f"PUB {spec.room} {spec.identity}")
            leg.mark_connected()
            audio, video = self.sources(p)
            endpoint.on_key = video.request_keyframe
            tag = self.SRTP_TAG

            def write(data: bytes) -> bool:
                return endpoint.send(data + tag)

            for mid, source in enumerate((audio, video)):
                source.begin(self.PAYLOAD_TYPES[source.kind], random.getrandbits(32), self.MID_ID, str(mid), self.LEVEL_ID, write)
            return
        leg = p.leg("subscribe")
        endpoint = await self._open(leg)
        legs.append(endpoint)
        leg.receive_plain({pt: kind for kind, pt in self.PAYLOAD_TYPES.items()},
                          lambda ssrc: endpoint.send(f"KEY {spec.room}".encode()))
        await endpoint.register(f"SUB {spec.room} {spec.identity}")
        leg.mark_connected()

    async def leave(self, p: Participant) -> None:
        for endpoint in p.handle or []:
            if endpoint.transport is not None:
                endpoint.transport.close()
