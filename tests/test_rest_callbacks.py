"""Status callbacks to a local receiver: every event in order with its parameters and a per-room
SequenceNumber, a signature RequestValidator accepts, GET or POST, retries with backoff, and a
receiver that hangs or fails never holds up signaling or REST."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from rest.app import CALLBACKS

from .conftest import wait_for
from .helpers.clients import Clients, local_track
from .rest_support import RestServer, call, rest_clients, rest_server  # noqa: F401

COMMON = {"AccountSid", "RoomName", "RoomSid", "RoomStatus", "RoomType", "StatusCallbackEvent", "Timestamp", "SequenceNumber"}
PARTICIPANT = {"ParticipantSid", "ParticipantStatus", "ParticipantIdentity"}
TRACK = {"TrackSid", "TrackKind", "TrackName"}


@dataclass
class Delivery:
    method: str
    url: str
    params: dict[str, str]  # the form body (POST)
    query: dict[str, str]
    signature: str
    at: float
    answered: int


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    failures: int = 0  # answer this many requests with 500 first
    gate: asyncio.Event | None = None  # hold requests until set

    def events(self) -> list[Delivery]:
        """Delivered (2xx) events."""
        return [d for d in self.deliveries if d.answered == 200]

    def names(self) -> list[str]:
        return [(d.params or d.query)["StatusCallbackEvent"] for d in self.events()]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver("")

    async def handle(request: web.Request) -> web.Response:
        if state.gate is not None:
            await state.gate.wait()
        params = dict(await request.post()) if request.method == "POST" else {}
        status = 500 if state.failures > 0 else 200
        state.failures -= 1
        state.deliveries.append(
            Delivery(request.method, str(request.url), {k: str(v) for k, v in params.items()}, dict(request.query),
                     request.headers.get("X-Twilio-Signature", ""), asyncio.get_running_loop().time(), status)  # fmt: skip
        )
        return web.Response(status=status)

    app = web.Application()
    app.router.add_route("*", "/events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/events"  # type: ignore[union-attr]
    yield state
    if state.gate is not None:
        state.gate.set()
    await runner.cleanup()


async def wait_events(receiver: Receiver, count: int) -> list[Delivery]:
    await wait_for(lambda: len(receiver.events()) >= count, message=f"{count} callbacks (got {receiver.names()})")
    return receiver.events()


async def test_every_event_in_order_with_parameters_and_signature(
    rest_server: RestServer, rest_clients: Clients, receiver: Receiver
) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="hooks", status_callback=receiver.url)
    await wait_events(receiver, 1)
    alice = await rest_clients.join("alice", "hooks", publish="a")
    await wait_events(receiver, 3)
    bob = await rest_clients.join("bob", "hooks", publish="")
    await wait_events(receiver, 4)
    local_track(alice, "mic").disable()
    await wait_events(receiver, 5)
    local_track(alice, "mic").enable()
    await wait_events(receiver, 6)
    rest_server.clock.advance(30)
    await bob.disconnect()
    await wait_events(receiver, 7)
    rest_server.clock.advance(30)
    await call(rooms(room.sid).update, status="completed")
    events = await wait_events(receiver, 10)

    assert receiver.names() == [
        "room-created", "participant-connected", "track-added", "participant-connected", "track-disabled",
        "track-enabled", "participant-disconnected", "track-removed", "participant-disconnected", "room-ended",
    ]  # fmt: skip
    assert [int(e.params["SequenceNumber"]) for e in events] == list(range(10))
    validator = RequestValidator(rest_server.credentials.auth_token)
    for event in events:
        p = event.params
        name = p["StatusCallbackEvent"]
        assert event.method == "POST" and validator.validate(event.url, p, event.signature), name
        assert (p["AccountSid"], p["RoomSid"], p["RoomName"], p["RoomType"]) == (room.account_sid, room.sid, "hooks", "group")
        expected = set(COMMON)
        if name.startswith(("participant-", "track-")):
            expected |= PARTICIPANT
        if name.startswith("track-"):
            expected |= TRACK
            assert (p["TrackKind"], p["TrackName"], p["ParticipantIdentity"]) == ("audio", "mic", "alice")
        if name == "participant-disconnected":
            expected.add("ParticipantDuration")
            assert p["ParticipantStatus"] == "disconnected"
        if name == "room-ended":
            expected.add("RoomDuration")
            assert (p["RoomStatus"], p["RoomDuration"]) == ("completed", "60")
        assert set(p) == expected, name
        assert p["Timestamp"].startswith("2030-01-01T00:0") and p["Timestamp"].endswith("Z")
    assert [e.params["ParticipantDuration"] for e in events if e.params["StatusCallbackEvent"] == "participant-disconnected"] == ["30", "60"]
    tampered = dict(events[0].params, RoomName="other")
    assert not validator.validate(events[0].url, tampered, events[0].signature)


async def test_get_callbacks_carry_the_parameters_in_the_signed_url(rest_server: RestServer, receiver: Receiver) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, status_callback=receiver.url, status_callback_method="GET")
    await call(rooms(room.sid).update, status="completed")
    created, ended = await wait_events(receiver, 2)
    validator = RequestValidator(rest_server.credentials.auth_token)
    for event in (created, ended):
        assert event.method == "GET" and event.params == {}
        assert validator.validate(event.url, {}, event.signature)
        assert (event.query["RoomSid"], event.query["AccountSid"]) == (room.sid, room.account_sid)
    assert receiver.names() == ["room-created", "room-ended"]
    assert [created.query["SequenceNumber"], ended.query["SequenceNumber"]] == ["0", "1"]


async def test_failed_deliveries_are_retried_with_backoff_in_order(rest_server: RestServer, receiver: Receiver) -> None:
    rest_server.app[CALLBACKS].backoff = 0.2
    receiver.failures = 3
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, status_callback=receiver.url)
    await call(rooms(room.sid).update, status="completed")  # room-ended queues behind room-created
    await wait_events(receiver, 2)
    attempts = receiver.deliveries
    assert [(d.params["StatusCallbackEvent"], d.params["SequenceNumber"], d.answered) for d in attempts] == [
        ("room-created", "0", 500), ("room-created", "0", 500), ("room-created", "0", 500),
        ("room-created", "0", 200), ("room-ended", "1", 200),
    ]  # fmt: skip
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:4])]
    assert gaps[0] >= 0.19 and gaps[1] >= 0.39 and gaps[2] >= 0.79, gaps  # 0.2 s, doubling


async def test_a_hanging_receiver_blocks_neither_signaling_nor_rest(
    rest_server: RestServer, rest_clients: Clients, receiver: Receiver
) -> None:
    receiver.gate = asyncio.Event()
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="busy", status_callback=receiver.url)
    alice = await rest_clients.join("alice", "busy", publish="")
    assert [p.identity for p in await call(rooms(room.sid).participants.list)] == ["alice"]
    await alice.disconnect()
    assert receiver.deliveries == []  # everything so far waits behind the first, unanswered request
    receiver.gate.set()
    await wait_events(receiver, 3)
    assert receiver.names() == ["room-created", "participant-connected", "participant-disconnected"]


async def test_ad_hoc_rooms_report_to_the_servers_default_callback(
    rest_server: RestServer, rest_clients: Clients, receiver: Receiver, tmp_path
) -> None:
    from sfu.credentials import generate
    from sfuserver.app import ServerConfig, build_app

    configured = build_app(ServerConfig(data_dir=tmp_path / "other", status_callback="http://127.0.0.1:9/hooks"), generate())
    assert configured[CALLBACKS].default_url == "http://127.0.0.1:9/hooks"  # `sfu serve --status-callback`

    rest_server.app[CALLBACKS].default_url = receiver.url
    alice = await rest_clients.join("alice", "adhoc", publish="")
    await wait_events(receiver, 2)
    await alice.disconnect()
    await wait_events(receiver, 4)
    assert receiver.names() == ["room-created", "participant-connected", "participant-disconnected", "room-ended"]
    validator = RequestValidator(rest_server.credentials.auth_token)
    assert all(validator.validate(e.url, e.params, e.signature) for e in receiver.events())
    assert {e.params["RoomName"] for e in receiver.events()} == {"adhoc"}
