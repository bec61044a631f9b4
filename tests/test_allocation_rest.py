"""Subscribe-rule ``priority`` over REST with the official twilio helper (issue 12): it sets the
priority the media plane allocates the subscriber's bandwidth by, over the publisher's."""

from __future__ import annotations

import json

from signaling.client import LocalVideoTrack

from .conftest import wait_for
from .helpers.clients import Clients, subscribed_media
from .media import CounterVideoTrack
from .rest_support import RestServer, call, raw, rest_clients, rest_server  # noqa: F401


def sink_priorities(server: RestServer, subscriber: str) -> dict[str, str]:
    for room in server.registry.rooms.values():
        for p in room.participants.values():
            if p.identity == subscriber:
                return {s.track.publisher.identity: getattr(s.sink, "priority") for s in p.subscriptions.values()}
    return {}


async def test_subscribe_rule_priority_overrides_the_publishers_and_reaches_the_media_plane(
    rest_server: RestServer, rest_clients: Clients
) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="prio")
    cam = LocalVideoTrack(CounterVideoTrack(), "cam")
    cam.priority = "low"
    await rest_clients.join("alice", "prio", tracks=[cam])
    await rest_clients.join("carol", "prio", publish="v")
    bob = await rest_clients.join("bob", "prio", publish="", receive="packets")
    await subscribed_media(bob, "alice", "cam")
    await subscribed_media(bob, "carol", "cam")
    assert sink_priorities(rest_server, "bob") == {"alice": "low", "carol": "standard"}  # the publishers' own

    rules = rooms(room.sid).participants(bob.local_participant.sid).subscribe_rules
    updated = await call(rules.update, rules=[{"type": "include", "all": True}, {"type": "include", "publisher": "alice", "priority": "high"}])
    assert updated.rules[1] == {"type": "include", "publisher": "alice", "priority": "high"}
    await wait_for(lambda: sink_priorities(rest_server, "bob") == {"alice": "high", "carol": "standard"}, message="rule priority applied")

    again = await call(rules.fetch)
    assert again.rules == updated.rules
    for bad in ({"type": "include", "all": True, "priority": "urgent"}, {"type": "include", "kind": "video", "priority": 3}):
        status, body = await raw(rest_server.http, rest_server.credentials, "POST",
                                 f"/v1/Rooms/{room.sid}/Participants/{bob.local_participant.sid}/SubscribeRules",
                                 data={"Rules": json.dumps([bad])})  # fmt: skip
        assert (status, body["code"]) == (400, 53215), bad

    await call(rules.update, rules=[{"type": "include", "all": True}])  # no rule priority: the publishers' again
    await wait_for(lambda: sink_priorities(rest_server, "bob") == {"alice": "low", "carol": "standard"}, message="back to the publishers'")
