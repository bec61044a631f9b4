"""The websocket drops, the call goes on: the client resumes its session with `sync`
within the grace period, or the others see it leave once the grace period is over."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from sfu.participant import Participant
from signaling.client import LocalDataTrack, LocalVideoTrack, Room, SignalingError
from signaling.server import Session

from .conftest import DEADLINE, Server, wait_for
from .helpers.clients import Clients, EventLog, RawSocket, about, connect_message, local_track, subscribed_data, subscribed_media
from .media import CounterVideoTrack


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


def participant(server: Server, identity: str) -> Participant:
    room = server.registry.find_in_progress("room")
    assert room is not None
    found = room.find_participant(identity)
    assert found is not None
    return found


async def go_away(server: Server, room: Room) -> asyncio.Event:
    """Drop ``room``'s websocket and hold its resume until the returned gate is set."""
    gate = asyncio.Event()
    assert room._http is not None
    room._http = GatedHttp(room._http, gate)  # type: ignore[assignment]
    me = participant(server, room.local_participant.identity)
    await room.drop_signaling()
    await wait_for(lambda: me.status == "reconnecting", message=f"{me.identity} reconnecting")
    return gate


async def test_a_track_whose_media_starts_while_its_publisher_is_away_becomes_ready(server: Server, clients: Clients) -> None:
    server.signaling.reconnect_grace = 60.0
    alice = await clients.join("alice", publish="")
    bob = await clients.join("bob", publish="")
    await wait_for(lambda: alice.offers_answered, message="alice's transport negotiated")
    chat = LocalDataTrack("chat")
    announced: list[object] = []
    alice.local_participant.on("track_published", announced.append)
    alice.local_participant._add(chat)
    alice.local_participant._send_tracks()  # published, but its data channel is not open yet
    me = participant(server, "alice")
    track = await wait_for(lambda: me.track_by_client_id(chat.id), message="chat published")
    assert not track.ready
    gate = await go_away(server, alice)

    alice._open_data_channel(chat)  # its media starts while the websocket is down

    received = await subscribed_data(bob, "alice", "chat")
    got: list[str] = []
    received.on("message", got.append)
    chat.send("while away")
    await wait_for(lambda: got == ["while away"], message="bob receives alice's chat")
    gate.set()
    await wait_for(lambda: announced == [chat], message="alice told her chat is published")


async def test_tracks_published_while_a_subscriber_is_away_are_subscribed_and_flow_after_the_resume(
    server: Server, clients: Clients
) -> None:
    server.signaling.reconnect_grace = 60.0
    alice = await clients.join("alice", publish="")
    bob = await clients.join("bob", publish="")
    bob_events = EventLog(bob)
    gate = await go_away(server, bob)

    screen = await alice.local_participant.publish_track(LocalVideoTrack(CounterVideoTrack(), "screen"))
    away = participant(server, "bob")
    # The subscription follows the room while bob's websocket is down: his media is independent of it.
    await wait_for(lambda: screen.sid in away.subscriptions, message="bob subscribed while away")

    gate.set()
    await bob_events.wait("reconnected")
    reader = await clients.watch(bob, "alice", "screen")
    await reader.advance(5)


async def test_tracks_unpublished_while_a_subscriber_is_away_leave_its_peer_connection(server: Server, clients: Clients) -> None:
    server.signaling.reconnect_grace = 60.0
    alice = await clients.join("alice", publish="v")
    bob = await clients.join("bob", publish="")
    cam = await subscribed_media(bob, "alice", "cam")
    bob_events = EventLog(bob)
    gate = await go_away(server, bob)
    away = participant(server, "bob")

    await alice.local_participant.unpublish_track(local_track(alice, "cam"))
    await wait_for(lambda: cam.sid not in away.subscriptions, message="bob's subscription dropped")
    # Its m-section is retired from bob's peer (inactive in the next offer), not left sending.
    await wait_for(lambda: cam.sid not in {s.track_sid for s in away.transport.peer.sections()}, message="m-section retired")

    gate.set()
    await bob_events.wait("reconnected")
    await bob_events.wait("track_unsubscribed", about("alice", "cam"))
    await wait_for(lambda: cam.transceiver.direction == "inactive", message="bob answered the offer retiring cam")


async def test_messages_still_arriving_on_a_replaced_websocket_are_ignored(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old socket's handler must stop once `sync` moved the session to a new socket,
    even for a message it reads before the server has closed the old socket."""
    holding, release = asyncio.Event(), asyncio.Event()
    real_update, real_resume = Session._update, Session.resume

    async def held_update(self: Session, message: dict[str, Any]) -> None:
        if message.get("hold"):
            holding.set()
            await release.wait()
        await real_update(self, message)

    def resume_releasing(self: Session, ws: Any) -> None:
        release.set()  # the old handler wakes up before the old writer closes its socket
        real_resume(self, ws)

    monkeypatch.setattr(Session, "_update", held_update)
    monkeypatch.setattr(Session, "resume", resume_releasing)
    token = server.token("alice")
    old = await RawSocket.open(server)
    new: RawSocket | None = None
    try:
        await old.send(connect_message(token))
        session = (await old.receive_type("connected"))["session"]
        await old.send({"type": "update", "version": 1, "hold": True, "participant": {"tracks": [{"id": "first", "kind": "data"}]}})
        await old.send({"type": "update", "version": 1, "participant": {"tracks": [{"id": "stale", "kind": "data"}]}})
        await asyncio.wait_for(holding.wait(), DEADLINE)
        new = await RawSocket.open(server)
        await new.send({"type": "sync", "version": 1, "token": token, "session": session})
        await new.receive_type("synced")
        await old.rest()  # the server closes the replaced socket
        assert [t.client_id for t in participant(server, "alice").published.values()] == ["first"]
    finally:
        await old.close()
        if new is not None:
            await new.send({"type": "disconnect", "version": 1})
            await new.close()


async def test_disconnect_during_a_reconnect_ends_the_client_cleanly(server: Server, clients: Clients) -> None:
    """The server drops the websocket; the user leaves while the client is reconnecting.
    The reconnect loop used to crash with RuntimeError('Session is closed')."""
    alice = await clients.join("alice", publish="")
    events = EventLog(alice)
    entered, gate = asyncio.Event(), asyncio.Event()
    assert alice._http is not None

    class Held(GatedHttp):
        async def ws_connect(self, *args: Any, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
            entered.set()
            return await super().ws_connect(*args, **kwargs)

    alice._http = Held(alice._http, gate)  # type: ignore[assignment]
    reader = alice._reader
    assert reader is not None
    session = next(s for s in server.signaling.sessions.values() if s.participant.identity == "alice")
    assert session.ws is not None
    await session.ws.close()  # the server drops the websocket
    await events.wait("reconnecting")
    await asyncio.wait_for(entered.wait(), DEADLINE)  # the client is inside its reconnect attempt

    await alice.disconnect()
    gate.set()  # the attempt goes on, on the HTTP session disconnect() closed

    await asyncio.wait_for(reader, DEADLINE)  # the reconnect loop ends without an exception
    assert alice.state == "disconnected"
    (error,) = await events.wait("disconnected")
    assert error is None
    assert events.find("reconnected") is None
    # Nothing resumed the session behind the user's back: the server sees her go at the end of the grace period.
    await wait_for(lambda: server.registry.find_in_progress("room") is None, message="alice gone from the room")
