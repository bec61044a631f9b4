"""The official SDK's dialect without a browser: TCMP framing, the numbering of our offers,
the room model in RSP's shapes, and the protocol over a raw websocket with an aiortc peer
standing in for the SDK's."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu.media import aiortc_hooks as hooks
from sfu.contracts import Offer
from sfu.media.peer import MediaConfig, NegotiationError, Peer, offered_tracks
from sfu.workers.pool import RemoteMediaPlane, WorkerSpec
from signaling.sources import CounterVideoTrack, ToneAudioTrack
from signaling.twilio import tcmp
from signaling.twilio.sdp import Numbering
from signaling.twilio.translate import ice

from .conftest import DEADLINE, Server, wait_for

# A Chrome offer's numbering (trimmed): VP8 96 / RTX 97, H264 102 / RTX 103, opus 111;
# audio level is extension 1, abs-send-time 2, mid 4.
CHROME_OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "a=mid:0", "a=sendrecv", "a=msid:stream a1",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1", "a=rtpmap:0 PCMU/8000", "a=ssrc:1111 cname:x",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103", "a=mid:1", "a=sendrecv", "a=msid:stream v1",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000", "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102",
    "a=ssrc-group:FID 2222 3333", "a=ssrc:2222 cname:x", "a=ssrc:3333 cname:x", "",
])  # fmt: skip

# An aiortc offer's numbering for a new video section: VP8 97 / RTX 98, H264 99 / RTX 100, an
# H264 profile Chrome did not offer (101), mid as extension 1, abs-send-time 3.
AIORTC_OFFER = "\r\n".join([
    "v=0", "o=- 3 3 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 0", "a=mid:0", "a=recvonly",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid", "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=rtpmap:96 opus/48000/2", "a=rtpmap:0 PCMU/8000",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:2", "a=sctp-port:5000",
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99 100 101", "a=mid:3", "a=sendonly", "a=msid:PA1 MT1",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid", "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:5 urn:example:not-offered",
    "a=rtpmap:97 VP8/90000", "a=rtcp-fb:97 nack", "a=rtcp-fb:97 nack pli", "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97",
    "a=rtpmap:99 H264/90000", "a=fmtp:99 packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:100 rtx/90000", "a=fmtp:100 apt=99",
    "a=rtpmap:101 H264/90000", "a=fmtp:101 packetization-mode=1;profile-level-id=640c1f", "",
])  # fmt: skip


# --- TCMP framing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"type": "welcome"}', '{"type": "hello", "body": []}', '{"type": "msg"}', '{"no": "type"}'],
)
def test_frames_that_are_not_client_tcmp_are_refused(text):
    with pytest.raises(tcmp.FrameError):
        tcmp.parse(text)


def test_client_frames_parse_and_the_timeout_is_negotiated_within_bounds():
    hello = tcmp.parse('{"id": "x", "timeout": 5000, "type": "hello", "version": 2, "body": {"type": "connect"}}')
    assert hello["body"] == {"type": "connect"}
    assert tcmp.parse('{"type": "msg", "body": {"type": "update"}}')["body"]["type"] == "update"
    assert tcmp.negotiate_timeout(hello) == 5000
    assert tcmp.negotiate_timeout({"timeout": 10}) == tcmp.MIN_TIMEOUT
    assert tcmp.negotiate_timeout({"timeout": 10**9}) == tcmp.MAX_TIMEOUT
    assert tcmp.negotiate_timeout({"timeout": True}) == tcmp.DEFAULT_TIMEOUT
    assert json.loads(tcmp.welcome(5000)) == {"type": "welcome", "negotiatedTimeout": 5000}


# --- our offers in the participant's numbering --------------------------------------------


def sections(sdp: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            blocks.append([line])
        elif blocks and line:
            blocks[-1].append(line)
    return blocks


def test_our_offer_takes_the_participants_payload_types_and_extension_ids():
    numbering = Numbering()
    numbering.learn(CHROME_OFFER)
    aligned = numbering.align(AIORTC_OFFER)
    audio, application, video = sections(aligned)
    assert audio[0] == "m=audio 9 UDP/TLS/RTP/SAVPF 111 0"
    assert "a=rtpmap:111 opus/48000/2" in audio
    assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in audio and "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level" in audio
    assert application == sections(AIORTC_OFFER)[1]  # untouched
    # VP8 97->96, its RTX 98->97 (apt too), H264 42e01f 99->102 / 100->103; the profile Chrome
    # never offered is left out, and so is the extension it never offered.
    assert video[0] == "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103"
    for line in ("a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack pli", "a=fmtp:97 apt=96", "a=fmtp:103 apt=102",
                 "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
                 "a=msid:PA1 MT1", "a=sendonly"):  # fmt: skip
        assert line in video, line
    assert not [line for line in video if "640c1f" in line or ":101 " in line or "not-offered" in line]
    assert aligned.endswith("\r\n") and "\n" not in aligned.replace("\r\n", "")


def test_the_numbering_stays_the_first_one_across_offers():
    numbering = Numbering()
    numbering.learn(CHROME_OFFER)
    renumbered = CHROME_OFFER.replace("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid")
    numbering.learn(renumbered)  # (a later offer may not reassign: the first stays)
    assert numbering.extensions["urn:ietf:params:rtp-hdrext:sdes:mid"] == 4
    assert numbering.align(AIORTC_OFFER) == numbering.align(AIORTC_OFFER)
    assert Numbering().align(AIORTC_OFFER) == AIORTC_OFFER  # nothing learnt yet: as made


def test_the_sections_an_offer_sends_are_found_by_msid_with_their_ssrcs():
    assert offered_tracks(CHROME_OFFER) == {"0": ("a1", 1111, None), "1": ("v1", 2222, 3333)}
    receive_only = CHROME_OFFER.replace("a=sendrecv", "a=recvonly")
    assert offered_tracks(receive_only) == {}


def test_our_candidates_go_out_as_an_rsp_ice_entry():
    sdp = CHROME_OFFER.replace("a=mid:0\r\n", "a=mid:0\r\na=ice-ufrag:abcd\r\na=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n")
    entry = ice(sdp)
    assert entry == {
        "candidates": [{"candidate": "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}],
        "ufrag": "abcd",
        "revision": 1,
    }
    assert ice(CHROME_OFFER) is None  # no ufrag: nothing to send


# --- the peer answers the participant's offer; the SFU wins glare ------------------------


async def sdk_like_offer(pc: RTCPeerConnection) -> str:
    """An offer as the SDK makes it: its audio and video sent, one transceiver each."""
    pc.addTrack(ToneAudioTrack())
    pc.addTrack(CounterVideoTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp  # type: ignore[no-any-return]


async def test_the_peer_answers_a_participant_offer_and_wins_glare(netns):
    client = RTCPeerConnection()
    peer = Peer("glare", MediaConfig())
    try:
        offer = await sdk_like_offer(client)
        answer = await peer.apply_offer(offer, 1)
        assert answer.count("m=") == 2 and answer.count("a=recvonly") == 2  # it receives what the participant sends
        assert peer.revision == 1
        peer.request_negotiation()  # (say, a subscription): the SFU's own offer, revision 2
        await wait_for(lambda: peer.negotiating, message="the SFU's offer")
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        with pytest.raises(NegotiationError) as refused:
            await peer.apply_offer(offer, 2)  # crosses the SFU's: refused, nothing applied
        assert refused.value.code == 53000
        assert peer.negotiating
    finally:
        await peer.close()
        await client.close()


async def test_an_offers_first_peer_holds_its_own_offer_until_the_participants_first_is_applied(netns):
    """The room asks for an offer as it joins the participant (subscriptions, the data channel
    transport); however long the participant's first offer takes, it is not refused as glare."""
    client = RTCPeerConnection()
    peer = Peer("first", MediaConfig(), offers_first=True)
    offers: list[Any] = []
    peer.on("offer", offers.append)
    try:
        peer.request_negotiation()
        offer = await sdk_like_offer(client)  # (awaits: ICE gathering and all)
        assert offers == [] and not peer.negotiating

        answer = await peer.apply_offer(offer, 1)

        assert answer.count("a=recvonly") == 2
        await wait_for(lambda: offers, message="the SFU's held offer, made after the participant's")
        assert offers[0].revision == 2
    finally:
        await peer.close()
        await client.close()


class OfferRecorder:
    """A TransportListener keeping the offers (the other events are not looked at here)."""

    def __init__(self) -> None:
        self.offers: list[Offer] = []

    def on_offer(self, offer: Offer) -> None:
        self.offers.append(offer)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: None


async def test_the_worker_channel_carries_offers_first_the_client_track_id_and_the_participants_offer():
    plane = RemoteMediaPlane(1, WorkerSpec(plane="tests.helpers.fake_plane:build", log_level="WARNING"))
    await plane.start()
    try:
        listener = OfferRecorder()
        transport = plane.create_transport("RMx", "x/sdk", listener, offers_first=True)
        transport.request_negotiation()  # (the room's, as it joins the participant)
        transport.publish("MT1", "video", None, client_track_id="cam-id")

        answer = await transport.apply_offer("sdk offer", 1)

        assert answer == "answer to sdk offer receiving cam-id"
        await wait_for(lambda: listener.offers, message="the held offer, made after the answer")
        # Held in the worker until the participant's offer (revision 1) was applied: not before it.
        assert [offer.revision for offer in listener.offers] == [2]
        await transport.close()
    finally:
        await plane.close()


async def test_our_unnegotiated_sections_stay_out_of_a_participant_offer_also_those_added_meanwhile():
    pc = RTCPeerConnection()
    try:
        ours = pc.addTransceiver("video", direction="sendonly")  # a subscription not offered yet
        with hooks.unnegotiated_transceivers_hidden(pc) as hide_new:
            assert pc.getTransceivers() == []
            later = pc.addTransceiver("audio", direction="sendonly")  # the room subscribed meanwhile
            hide_new()
            assert pc.getTransceivers() == []
        assert pc.getTransceivers() == [ours, later]
    finally:
        await pc.close()


# --- the protocol over a raw websocket ------------------------------------------------------


class TcmpSocket:
    """A raw ``/signaling/twilio`` socket: TCMP frames in and out."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = http
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, server: Server) -> "TcmpSocket":
        http = aiohttp.ClientSession()
        return cls(http, await http.ws_connect(server.url + "/twilio"))

    async def hello(self, body: dict[str, Any] | None = None, timeout: int = 5000) -> None:
        frame: dict[str, Any] = {"id": str(uuid.uuid4()), "timeout": timeout, "type": "hello", "version": 2}
        if body is not None:
            frame["body"] = body
        await self.ws.send_str(json.dumps(frame))

    async def msg(self, body: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps({"type": "msg", "body": body}))

    async def frame(self, skip_heartbeats: bool = True) -> dict[str, Any]:
        while True:
            received = await self.ws.receive(timeout=DEADLINE)
            assert received.type == aiohttp.WSMsgType.TEXT, received
            frame = json.loads(received.data)
            if not (skip_heartbeats and frame["type"] == "heartbeat"):
                return frame  # type: ignore[no-any-return]

    async def welcome(self) -> dict[str, Any]:
        """The next ``welcome`` (RSP messages before it are kept in ``seen``)."""
        while (frame := await self.frame())["type"] == "msg":
            self.seen.append(frame["body"])
        assert frame["type"] == "welcome", frame
        return frame

    async def body(self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda body: True) -> dict[str, Any]:
        """The first RSP message of type ``kind`` (matching ``where``), seen or next; the
        others are kept in ``seen`` (the SDK queues an ``update`` sent before ``connected``)."""
        async with asyncio.timeout(DEADLINE):  # (heartbeats keep coming: each receive returns)
            while True:
                found = next((b for b in self.seen if b["type"] == kind and where(b)), None)
                if found is not None:
                    self.seen.remove(found)
                    return found
                frame = await self.frame()
                if frame["type"] == "msg":
                    self.seen.append(frame["body"])

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


def connect_body(token: str, offer: str, tracks: list[dict[str, Any]], name: str = "raw") -> dict[str, Any]:
    return {
        "name": name, "participant": {"revision": 1, "tracks": tracks},
        "peer_connections": [{"description": {"type": "offer", "revision": 1, "sdp": offer}, "id": "pc-1"}],
        "type": "connect", "version": 2, "ice_servers": "overrode", "media_signaling": {},
        "subscribe": {"rules": [{"type": "include", "all": True}], "revision": 1}, "format": "unified", "token": token,
    }  # fmt: skip


def sdk_tracks(offer: str) -> list[dict[str, Any]]:
    """The SDK's track list for its offer: ids are the offer's msid track ids."""
    kinds = {"m=audio": "audio", "m=video": "video"}
    out = []
    for block in sections(offer):
        kind = kinds.get(block[0].split(" ")[0])
        msid = next((line.split()[1] for line in block if line.startswith("a=msid:")), None)
        if kind and msid:
            out.append({"enabled": True, "id": msid, "kind": kind, "name": f"{kind}-name", "priority": "standard"})
    return out


async def test_connect_is_welcomed_then_connected_and_a_repeated_hello_makes_no_second_participant(server):
    client = RTCPeerConnection()
    sock = await TcmpSocket.open(server)
    try:
        offer = await sdk_like_offer(client)
        tracks = sdk_tracks(offer)
        await sock.hello(connect_body(server.token("raw"), offer, tracks), timeout=1000)
        assert await sock.frame() == {"type": "welcome", "negotiatedTimeout": 1000}  # first, before any msg
        connected = await sock.body("connected")
        room = server.registry.find_in_progress("raw")
        assert room is not None
        me = next(iter(room.participants.values()))
        assert connected["sid"] == room.sid and connected["name"] == "raw"
        assert connected["participant"] == {"sid": me.sid, "identity": "raw"} and connected["participants"] == []
        assert connected["options"]["session_timeout"] == 30 and isinstance(connected["session"], str)
        assert connected["recording"] == {"is_recording": False, "revision": 1}
        published = {t["id"]: t for t in connected["published"]["tracks"]}
        assert set(published) == {t["id"] for t in tracks}
        assert all(t["state"] == "ready" and t["sid"] in me.published for t in published.values())
        (pc,) = connected["peer_connections"]
        assert pc["id"] == "pc-1" and pc["description"]["type"] == "answer" and pc["description"]["revision"] == 1
        assert pc["ice"]["ufrag"] in pc["description"]["sdp"] and pc["ice"]["candidates"]

        await sock.hello(connect_body(server.token("raw"), offer, tracks))  # our welcome was "lost"
        assert await sock.welcome() == {"type": "welcome", "negotiatedTimeout": 1000}
        assert [p.identity for p in room.participants.values()] == ["raw"] and next(iter(room.participants.values())) is me

        # The server's first offer (revision 2) opens the data channel transport.
        update = await sock.body("update", lambda body: "peer_connections" in body)
        description = update["peer_connections"][0]["description"]
        assert description["type"] == "offer" and description["revision"] == 2 and "m=application" in description["sdp"]

        # Heartbeats come at least every negotiated timeout.
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (await sock.frame(skip_heartbeats=False))["type"] != "heartbeat":
            pass
        assert loop.time() - start < 1.0

        await sock.msg({"session": connected["session"], "type": "disconnect", "version": 2})
        await wait_for(lambda: not room.participants, message="the participant to leave")
    finally:
        await sock.close()
        await client.close()


async def test_a_bad_token_is_welcomed_then_refused_with_its_code(server):
    sock = await TcmpSocket.open(server)
    try:
        await sock.hello(connect_body("not-a-token", "v=0\r\n", []))
        assert (await sock.frame())["type"] == "welcome"
        assert await sock.body("error") == {"type": "error", "code": 20101, "message": "Invalid Access Token"}
        assert server.registry.find_in_progress("raw") is None
    finally:
        await sock.close()


async def test_ice_is_answered_with_iced_after_a_valid_token_only(server):
    sock = await TcmpSocket.open(server)
    try:
        await sock.hello({"edge": "roaming", "token": server.token("ice"), "type": "ice", "version": 1})
        assert (await sock.frame())["type"] == "welcome"
        assert await sock.body("iced") == {"type": "iced", "ice_servers": []}  # (this server has none)
    finally:
        await sock.close()
    sock = await TcmpSocket.open(server)
    try:
        await sock.hello({"edge": "roaming", "token": "forged", "type": "ice", "version": 1})
        assert (await sock.frame())["type"] == "welcome"
        assert (await sock.body("error"))["code"] == 20101
    finally:
        await sock.close()


async def test_sync_on_a_new_socket_resumes_the_same_participant_and_is_answered_with_a_full_synced(server, clients):
    other = await clients.join("other", "raw", publish="vad", receive="packets")
    client = RTCPeerConnection()
    sock = await TcmpSocket.open(server)
    try:
        offer = await sdk_like_offer(client)
        tracks = sdk_tracks(offer)
        await sock.hello(connect_body(server.token("raw"), offer, tracks))
        await sock.welcome()
        connected = await sock.body("connected")
        (them,) = connected["participants"]
        assert them["identity"] == "other" and them["state"] == "connected"
        assert {t["kind"] for t in them["tracks"]} <= {"audio", "video", "data"} and all(t["priority"] == "standard" for t in them["tracks"])
        room = server.registry.find_in_progress("raw")
        assert room is not None
        me = room.find_participant("raw")
        assert me is not None

        await sock.close()  # dropped without disconnect: the others see it reconnecting
        await wait_for(lambda: me.status == "reconnecting", message="raw to be reconnecting")
        sock = await TcmpSocket.open(server)
        sync = {
            "name": "raw", "participant": {"revision": 2, "tracks": tracks}, "type": "sync", "version": 2,
            "session": connected["session"], "token": server.token("raw"),
            "peer_connections": [{"id": "pc-1", "description": {"type": "offer", "revision": 1, "sdp": offer}}],
        }  # fmt: skip
        await sock.hello(sync)
        await sock.welcome()
        synced = await sock.body("synced")
        assert synced["participant"] == {"sid": me.sid, "identity": "raw"} and room.find_participant("raw") is me
        assert me.status == "connected"
        assert [p["identity"] for p in synced["participants"]] == ["other"]
        assert [pc["id"] for pc in synced["peer_connections"]] == ["pc-1"]  # (one left out would be closed by the SDK)
        assert {t["id"] for t in synced["published"]["tracks"]} == {t["id"] for t in tracks}
        assert other.participants and next(iter(other.participants.values())).identity == "raw"
    finally:
        await sock.close()
        await client.close()


async def test_the_server_wins_glare_and_answers_the_offer_made_after_the_participant_answered(server):
    client = RTCPeerConnection()
    sock = await TcmpSocket.open(server)
    try:
        offer = await sdk_like_offer(client)
        await sock.hello(connect_body(server.token("raw"), offer, sdk_tracks(offer)))
        await sock.welcome()
        connected = await sock.body("connected")
        session = connected["session"]
        await client.setRemoteDescription(RTCSessionDescription(sdp=connected["peer_connections"][0]["description"]["sdp"], type="answer"))
        ours = (await sock.body("update", lambda body: "peer_connections" in body))["peer_connections"][0]["description"]
        assert ours["type"] == "offer" and ours["revision"] == 2

        # The participant's offer crosses ours: dropped (no answer), ours stands.
        crossing = {"id": "pc-1", "description": {"type": "offer", "revision": 2, "sdp": offer}}
        await sock.msg({"session": session, "type": "update", "version": 2, "peer_connections": [crossing]})
        # It answers ours (as the SDK does after rolling its own back), then offers again.
        await client.setRemoteDescription(RTCSessionDescription(sdp=ours["sdp"], type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        answer = {"id": "pc-1", "description": {"type": "answer", "revision": 2, "sdp": client.localDescription.sdp}}
        await sock.msg({"session": session, "type": "update", "version": 2, "peer_connections": [answer]})
        await client.setLocalDescription(await client.createOffer())
        again = {"id": "pc-1", "description": {"type": "offer", "revision": 3, "sdp": client.localDescription.sdp}}
        await sock.msg({"session": session, "type": "update", "version": 2, "peer_connections": [again]})
        reply = await sock.body("update", lambda body: "peer_connections" in body)
        description = reply["peer_connections"][0]["description"]
        assert description["type"] == "answer" and description["revision"] == 3  # the only answer: 2 was dropped
        await client.setRemoteDescription(RTCSessionDescription(sdp=description["sdp"], type="answer"))
        assert client.signalingState == "stable"
    finally:
        await sock.close()
        await client.close()
