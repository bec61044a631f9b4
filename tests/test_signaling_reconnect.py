"""The websocket drops, the call goes on: the client resumes its session with `sync`
within the grace period, or the others see it leave once the grace period is over."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from signaling.client import SignalingError

from .conftest import Server
from .helpers.clients import Clients, EventLog, about, subscribed_media


async def test_dropped_websocket_resumes_and_media_keeps_flowing(server: Server, clients: Clients) -> None:
    alice = await clients.join("alice", publish="v")
    bob = await clients.join("bob", publish="v")
    alice_sees_bob = await clients.watch(alice, "bob")
    bob_sees_alice = await clients.watch(bob, "alice")
    await alice_sees_bob.advance(5)
    alice_events, bob_events = EventLog(alice), EventLog(bob)
    session, participant_sid = alice.session, alice.local_participant.sid

    await alice.drop_signaling()

    await alice_events.wait("reconnecting")
    await alice_events.wait("reconnected")
    assert alice.state == "connected" and alice.session == session
    (p,) = await bob_events.wait("participant_reconnecting", about("alice"))
    assert p.sid == participant_sid
    await bob_events.wait("participant_reconnected", about("alice"))
    assert bob_events.find("participant_disconnected") is None
    assert alice_events.find("disconnected") is None
    # Media never stopped, in either direction, and still flows after the resume.
    await bob_sees_alice.advance(10)
    await alice_sees_bob.advance(10)
    # The resumed session is fully alive: signaling works again (a mute reaches bob).
    mark = bob_events.mark()
    next(t for t in alice.local_participant.tracks.values() if t.name == "cam").disable()
    await bob_events.wait("track_disabled", about("alice", "cam"), since=mark)


async def test_not_coming_back_within_the_grace_period_is_leaving(server: Server, clients: Clients) -> None:
    alice = await clients.join("alice", publish="v")
    bob = await clients.join("bob", publish="")
    await subscribed_media(bob, "alice", "cam")
    alice_events, bob_events = EventLog(alice), EventLog(bob)

    alice.url = "ws://127.0.0.1:9/signaling"  # nothing listens there: every resume attempt fails
    await alice.drop_signaling()

    await bob_events.wait("participant_reconnecting", about("alice"))
    (gone,) = await bob_events.wait("participant_disconnected", about("alice"))
    assert gone.identity == "alice"
    await bob_events.wait("track_unsubscribed", about("alice", "cam"))
    room = server.registry.find_in_progress("room")
    assert room is not None and [p.identity for p in room.participants.values()] == ["bob"]
    # The client gives up too and reports the lost connection.
    (error,) = await alice_events.wait("disconnected")
    assert isinstance(error, SignalingError) and error.code == 53001


class GatedHttp:
    """Stands in for a client's aiohttp session: reconnects wait until ``gate`` opens."""

    def __init__(self, http: aiohttp.ClientSession, gate: asyncio.Event) -> None:
        self.http = http
        self.gate = gate

    async def ws_connect(self, *args: Any, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        await self.gate.wait()
        return await self.http.ws_connect(*args, **kwargs)

    async def close(self) -> None:
        await self.http.close()


async def test_resuming_catches_up_on_what_happened_meanwhile(server: Server, clients: Clients) -> None:
    server.signaling.reconnect_grace = 60.0  # the test decides when bob comes back
    alice = await clients.join("alice", publish="v")
    bob = await clients.join("bob", publish="")
    carol = await clients.join("carol", publish="")
    await subscribed_media(bob, "alice", "cam")
    bob_events, carol_events = EventLog(bob), EventLog(carol)
    gate = asyncio.Event()
    assert bob._http is not None
    bob._http = GatedHttp(bob._http, gate)  # type: ignore[assignment]

    await bob.drop_signaling()
    await carol_events.wait("participant_reconnecting", about("bob"))
    # While bob is away alice leaves and dave arrives; bob hears of neither yet.
    await alice.disconnect()
    await carol_events.wait("participant_disconnected", about("alice"))
    await clients.join("dave", publish="")
    await carol_events.wait("participant_connected", about("dave"))
    assert bob_events.find("participant_disconnected") is None

    gate.set()
    await bob_events.wait("reconnected")
    await bob_events.wait("track_unsubscribed", about("alice", "cam"))
    await bob_events.wait("participant_disconnected", about("alice"))
    await bob_events.wait("participant_connected", about("dave"))
    assert sorted(p.identity for p in bob.participants.values()) == ["carol", "dave"]
    await carol_events.wait("participant_reconnected", about("bob"))
