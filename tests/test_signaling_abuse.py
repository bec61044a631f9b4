"""Bad input gets an `error` and changes nothing: not the room, not the others' media, and
not the sender's own session where it can go on.

Each test has alice publishing the counter video, carol watching it and mallory (who
publishes a microphone carol subscribes to) misbehaving; carol must see no event at all
and keep decoding alice's video with increasing counters across the abuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc.rtp import RtpPacket

from sfu import errors
from signaling import protocol
from signaling.client import LocalAudioTrack, LocalDataTrack, Room

from .conftest import DEADLINE, Server, wait_for
from .helpers.clients import Clients, EventLog, RawSocket, VideoReader, about, connect_message, subscribed_data, subscribed_media
from .media import ToneAudioTrack

EVERYTHING = [{"type": "include", "all": True}]
INTERNAL_ERROR = "Internal signaling error"  # what the server says when bad input escaped its checks


@dataclass
class Scene:
    server: Server
    clients: Clients
    alice: Room
    carol: Room
    mallory: Room
    watch: VideoReader  # carol decoding alice's video
    carol_events: EventLog
    mallory_events: EventLog

    async def assert_undisturbed(self) -> None:
        """carol saw nothing happen and alice's video goes on; mallory is still published."""
        await self.watch.advance(10)
        assert self.carol_events.events == [], f"carol saw {self.carol_events.names()}"
        room = self.server.registry.find_in_progress("room")
        assert room is not None
        assert sorted(p.identity for p in room.participants.values()) == ["alice", "carol", "mallory"]
        assert await subscribed_media(self.carol, "mallory", "mic", timeout=1)

    async def assert_mallory_still_works(self) -> None:
        """mallory's session still answers: a rules round trip."""
        assert await self.mallory.set_subscribe_rules(EVERYTHING) == EVERYTHING

    async def abuse(self, text: str, code: int) -> None:
        """mallory sends ``text``; it must be answered with an error ``code``."""
        mark = self.mallory_events.mark()
        await self.mallory.send_raw(text)
        try:
            (error,) = await self.mallory_events.wait("error", since=mark)
        except AssertionError as exc:
            raise AssertionError(f"no error for {text[:120]!r}: {exc}") from None
        assert error.code == code, f"{text[:120]!r}: {error}"
        assert error.message != INTERNAL_ERROR, f"{text[:120]!r} hit an unexpected failure in the server"


@pytest.fixture
async def scene(server: Server, clients: Clients) -> AsyncIterator[Scene]:
    alice = await clients.join("alice", publish="v", receive="packets")
    carol = await clients.join("carol", publish="")
    mallory = await clients.join("mallory", publish="a", receive="packets")
    watch = await clients.watch(carol, "alice")
    await subscribed_media(carol, "mallory", "mic")
    await watch.advance(5)
    yield Scene(server, clients, alice, carol, mallory, watch, EventLog(carol), EventLog(mallory))


def update(**parts: Any) -> str:
    return json.dumps({"type": "update", "version": 1, **parts})


def mic_of(scene: Scene) -> dict[str, Any]:
    """mallory's current track entry, as her client describes it."""
    (track,) = scene.mallory.local_participant.tracks.values()
    return track.describe()


CASES: dict[str, list[str]] = {
    "malformed JSON": ["{", '{"type": "update"', "\x00\xff", "", "[" * 100_000 + "]" * 100_000],
    "non-object JSON": ["[1, 2, 3]", "42", "null", '"update"', "true"],
    "unknown message types": [
        json.dumps({"type": "launch", "version": 1}),
        json.dumps({"version": 1}),
        json.dumps({"type": 5, "version": 1}),
        json.dumps({"type": ["update"], "version": 1}),
        json.dumps({"type": {"a": 1}, "version": 1}),
        json.dumps({"type": "connected", "version": 1}),
    ],
    "wrong protocol version": [
        json.dumps({"type": "update", "version": 2}),
        json.dumps({"type": "update", "version": "1"}),
        json.dumps({"type": "update", "version": True}),
        json.dumps({"type": "update", "version": 1.5}),
    ],
    "wrong field types": [
        update(participant="me"),
        update(participant={"tracks": "all"}),
        update(participant={"tracks": [5]}),
        update(participant={"tracks": [{"id": 5, "kind": "audio"}]}),
        update(participant={"tracks": [{"id": "x", "kind": "audio", "enabled": "yes"}]}),
        update(participant={"tracks": [{"id": "x", "kind": "audio", "name": 7}]}),
        update(peer_connection=[]),
        update(peer_connection={"description": "sdp"}),
        update(peer_connection={"description": {"type": "answer", "revision": "1", "sdp": "x"}}),
        update(peer_connection={"description": {"type": "answer", "revision": True, "sdp": "x"}}),
        update(peer_connection={"description": {"type": "answer", "revision": 1, "sdp": 5}}),
        update(peer_connection={"ice": "candidates"}),
        update(peer_connection={"ice": {"candidates": "x"}}),
        update(peer_connection={"ice": {"candidates": [5]}}),
        update(peer_connection={"ice": {"candidates": [{"candidate": 5}]}}),
        update(peer_connection={"ice": {"candidates": [{"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMLineIndex": "0"}]}}),
        update(subscribe="all"),
    ],
    "an answer with a wrong revision": [
        update(peer_connection={"description": {"type": "answer", "revision": 9999, "sdp": "v=0\r\n"}}),
        update(peer_connection={"description": {"type": "answer", "revision": -1, "sdp": "v=0\r\n"}}),
    ],
    "an offer from the client": [
        update(peer_connection={"description": {"type": "offer", "revision": 1, "sdp": "v=0\r\n"}}),
        update(peer_connection={"description": {"type": "pranswer", "revision": 1, "sdp": "v=0\r\n"}}),
        update(peer_connection={"description": {"revision": 1, "sdp": "v=0\r\n"}}),
    ],
    "garbage ICE candidates": [
        update(peer_connection={"ice": {"candidates": [{"candidate": "candidate:garbage", "sdpMid": "0"}]}}),
        update(peer_connection={"ice": {"candidates": [{"candidate": "candidate:1 1 udp x 10.0.0.1 9 typ host", "sdpMid": "0"}]}}),
        update(peer_connection={"ice": {"candidates": [{"candidate": "candidate:1 1 udp 1 10.0.0.1 port typ host", "sdpMid": "0"}]}}),
        update(peer_connection={"ice": {"candidates": [{"candidate": "\x00" * 300, "sdpMid": "0"}]}}),
    ],
    "signaling out of order": [
        json.dumps(connect_message("not even a token")),
        json.dumps({"type": "sync", "version": 1, "token": "x", "session": "y"}),
    ],
}


@pytest.mark.parametrize("texts", list(CASES.values()), ids=list(CASES))
async def test_bad_message_gets_an_error_and_disturbs_nothing(scene: Scene, texts: list[str]) -> None:
    for text in texts:
        await scene.abuse(text, errors.SIGNALING_ERROR)
    await scene.assert_undisturbed()
    await scene.assert_mallory_still_works()


@pytest.mark.parametrize(
    "bad, code",
    [
        ({"id": "s1", "kind": "smell"}, 53125),
        ({"id": "s1", "kind": "screen"}, 53125),
        ({"id": "", "kind": "audio"}, 53300),
        ({"id": "s1", "kind": "audio", "name": "n" * 200}, 53300),
    ],
    ids=["unknown kind", "another unknown kind", "empty id", "name too long"],
)
async def test_bad_track_is_refused_and_the_rest_unchanged(scene: Scene, bad: dict[str, Any], code: int) -> None:
    # Alone (which would otherwise unpublish the mic) and next to the mic.
    await scene.abuse(update(participant={"tracks": [bad]}), code)
    await scene.abuse(update(participant={"tracks": [mic_of(scene), bad]}), code)
    await scene.assert_undisturbed()
    await scene.assert_mallory_still_works()


async def test_duplicate_track_ids_and_names_are_refused(scene: Scene) -> None:
    mic = mic_of(scene)
    await scene.abuse(update(participant={"tracks": [mic, mic]}), 53300)
    await scene.abuse(update(participant={"tracks": [mic, {**mic, "kind": "data", "name": "other"}]}), 53300)
    await scene.abuse(update(participant={"tracks": [mic, {"id": "x", "kind": "data", "name": mic["name"]}]}), 53304)
    await scene.abuse(update(participant={"tracks": [{"id": "a", "kind": "data", "name": "n"}, {"id": "b", "kind": "data", "name": "n"}]}), 53304)
    await scene.assert_undisturbed()
    # A track published the proper way afterwards works: carol receives mallory's data.
    chat = LocalDataTrack("chat")
    await scene.mallory.local_participant.publish_track(chat)
    received: list[str] = []
    (await subscribed_data(scene.carol, "mallory")).on("message", received.append)
    chat.send("still here")
    await wait_for(lambda: received == ["still here"], message="mallory's data message")


async def test_connect_twice_is_refused_and_the_session_kept(scene: Scene) -> None:
    await scene.abuse(json.dumps(connect_message(scene.server.token("mallory"), "room")), errors.SIGNALING_ERROR)
    await scene.abuse(json.dumps(connect_message(scene.server.token("mallory"), "another-room")), errors.SIGNALING_ERROR)
    assert scene.server.registry.find_in_progress("another-room") is None
    await scene.assert_undisturbed()
    await scene.assert_mallory_still_works()


async def test_update_before_connect_is_refused_and_connect_still_possible(scene: Scene) -> None:
    raw = await RawSocket.open(scene.server)
    try:
        await raw.send(update(subscribe={"rules": EVERYTHING}))
        error = await raw.receive_type("error")
        assert error["code"] == errors.SIGNALING_ERROR and error["request"] == "update"
        await raw.send({"type": "heartbeat", "version": 1})
        await raw.send(connect_message(scene.server.token("trudy"), "room"))
        connected = await raw.receive_type("connected")
        assert connected["room"]["sid"] == scene.alice.sid
        await scene.carol_events.wait("participant_connected", about("trudy"))
        scene.carol_events.events.clear()
        await raw.send({"type": "disconnect", "version": 1})
        rest = await raw.rest()
        assert rest[-1]["type"] == "disconnected", rest
        await scene.carol_events.wait("participant_disconnected", about("trudy"))
        scene.carol_events.events.clear()
    finally:
        await raw.close()
    await scene.assert_undisturbed()


async def test_garbage_sdp_in_an_answer_is_refused_and_the_real_answer_still_works(scene: Scene) -> None:
    # Hold back mallory's next answer; answer with garbage first, then with the real one.
    held: list[dict[str, Any]] = []
    real_send = scene.mallory._send

    def hold_answers(message: dict[str, Any]) -> None:
        if message.get("peer_connection", {}).get("description", {}).get("type") == "answer":
            held.append(message)
        else:
            real_send(message)

    scene.mallory._send = hold_answers  # type: ignore[method-assign]
    # alice publishes a second microphone: mallory subscribes, which takes a new offer.
    await scene.alice.local_participant.publish_track(LocalAudioTrack(ToneAudioTrack(), "mic2"))
    await wait_for(lambda: held, message="mallory's answer to the new offer")
    answer = held[0]["peer_connection"]["description"]
    revision, sdp = answer["revision"], answer["sdp"]
    garbage = [
        "garbage",
        "",
        "v=0\r\n",
        sdp.split("\r\nm=")[0] + "\r\n",  # the session part without any media section
        sdp[: len(sdp) // 3],
        sdp.replace("\r\nm=", "\r\nm=garbage ", 1),
        "a=" + "x" * 100_000 + "\r\n",
    ]
    for text in garbage:
        await scene.abuse(update(peer_connection={"description": {"type": "answer", "revision": revision, "sdp": text}}), 53403)
    for wrong in (revision - 1, revision + 1):
        await scene.abuse(update(peer_connection={"description": {"type": "answer", "revision": wrong, "sdp": sdp}}), errors.SIGNALING_ERROR)
    scene.mallory._send = real_send  # type: ignore[method-assign]
    real_send(held[0])
    mic2 = await subscribed_media(scene.mallory, "alice", "mic2")
    packet = await asyncio.wait_for(mic2.recv(), DEADLINE)
    assert isinstance(packet, RtpPacket) and packet.payload
    # carol got alice's new microphone too, and nothing else happened.
    await subscribed_media(scene.carol, "alice", "mic2")
    scene.carol_events.events = [e for e in scene.carol_events.events if not about("alice", "mic2")(*e[1])]
    await scene.assert_undisturbed()


OVER_THE_LIMIT = {  # MAX_MESSAGE_SIZE is the websocket's own limit: more closes the socket (1009)
    "garbage": "x" * (protocol.MAX_MESSAGE_SIZE + 1),
    "a heartbeat": json.dumps({"type": "heartbeat", "version": 1, "pad": "x" * protocol.MAX_MESSAGE_SIZE}),
    "an update of two-byte characters": json.dumps({"type": "update", "version": 1, "pad": "é" * (protocol.MAX_MESSAGE_SIZE // 2 + 1)}),
}


@pytest.mark.parametrize("text", list(OVER_THE_LIMIT.values()), ids=list(OVER_THE_LIMIT))
async def test_frame_over_the_websocket_limit_costs_only_the_senders_socket(scene: Scene, text: str) -> None:
    with contextlib.suppress(ConnectionError):  # the server may cut the socket mid-frame
        await scene.mallory.send_raw(text)
    # The server drops mallory's websocket; her client resumes the session.
    await scene.mallory_events.wait("reconnecting")
    await scene.mallory_events.wait("reconnected")
    assert scene.mallory_events.find("disconnected") is None
    # carol sees mallory's brief absence, and nothing else.
    await scene.carol_events.wait("participant_reconnected", about("mallory"))
    scene.carol_events.events = [e for e in scene.carol_events.events if e[0] not in ("participant_reconnecting", "participant_reconnected")]
    await scene.assert_undisturbed()
    await scene.assert_mallory_still_works()



async def test_a_flooding_client_gets_errors_and_the_room_goes_on(server, clients) -> None:
    """Hundreds of messages at once: past the per-socket budget each gets an error, the
    flooder stays connected, and others still join and see it."""
    import aiohttp

    from signaling import protocol

    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url) as ws:
            await ws.send_str(protocol.encode({"type": "connect", "version": 1, "token": server.token("flood"), "name": "room"}))
            for _ in range(600):
                await ws.send_str(protocol.encode({"type": "update", "version": 1, "subscribe": {"rules": [{"type": "include", "all": True}]}}))
            refused = answered = 0
            while answered + refused < 600:
                body = protocol.decode_server((await asyncio.wait_for(ws.receive(), 30)).data)
                if body["type"] == "error" and "Too many messages" in body["message"]:
                    refused += 1
                elif body["type"] == "update" and "subscribe" in body:
                    answered += 1
            assert refused > 0 and answered >= 150
            alice = await clients.join("alice", publish="")
            assert "flood" in {p.identity for p in alice.participants.values()}
