"""Subscribe rules' ``priority`` is high, standard or low, nothing else (53215): a 900 KB value
used to be stored and served back, over REST and signaling alike."""

from __future__ import annotations

import json

import pytest

from sfu.rules import InvalidRules, TrackRef, priority, validate
from signaling.client import SignalingError, connect

from .conftest import Server, wait_for
from .rest_support import raw
from .test_records import connect_refusal

HUGE = "h" * 900_000
BAD_PRIORITIES = ["urgent", HUGE, "", 1, None, ["high"]]


@pytest.mark.parametrize("priority", ["high", "standard", "low"])
def test_the_three_priorities_are_accepted(priority: str) -> None:
    rules = [{"type": "include", "kind": "video", "priority": priority}]
    assert validate(rules) == rules


@pytest.mark.parametrize("priority", BAD_PRIORITIES, ids=["word", "900KB", "empty", "number", "null", "list"])
def test_any_other_priority_is_refused(priority: object) -> None:
    with pytest.raises(InvalidRules) as info:
        validate([{"type": "include", "kind": "video", "priority": priority}])
    assert info.value.code == 53215


def test_a_subscription_takes_the_priority_of_the_last_matching_include_rule() -> None:
    """What the overload guard sheds first (issue 9): low before standard before high."""
    camera = TrackRef("MT1", "camera", "video", "PA1", "alice")
    screen = TrackRef("MT2", "screen", "video", "PA1", "alice")
    rules = validate([
        {"type": "include", "all": True},
        {"type": "include", "kind": "video", "priority": "low"},
        {"type": "include", "track": "screen", "priority": "high"},
        {"type": "exclude", "publisher": "bob", "priority": "high"},  # an exclude rule gives none
    ])
    assert priority(rules, camera) == "low"
    assert priority(rules, screen) == "high"
    assert priority(validate([{"type": "include", "all": True}]), camera) == "standard"


def test_overlong_publisher_or_track_is_refused() -> None:
    for key in ("publisher", "track"):
        with pytest.raises(InvalidRules):
            validate([{"type": "include", key: HUGE}])


async def test_rest_and_signaling_refuse_a_bad_priority(server: Server) -> None:
    # Before connect a message may hold 64 KiB (a 900 KB one closes the socket, 1009): the
    # largest priority that fits is refused by the rules themselves.
    bad = [{"type": "include", "kind": "audio", "priority": "h" * 60_000}]
    refused = await connect_refusal(server.url, server.token("carol"), "room", subscribe={"rules": bad})  # fatal
    assert refused["code"] == 53215, refused["message"]
    bob = await connect(server.url, server.token("bob"), name="room")
    try:
        with pytest.raises(SignalingError) as info:  # mid-call
            await bob.set_subscribe_rules([{"type": "include", "all": True}, {"type": "exclude", "kind": "data", "priority": "urgent"}])
        assert info.value.code == 53215 and bob.state == "connected"
        with pytest.raises(SignalingError) as info:  # 900 KB fits a connected socket's 1 MiB
            await bob.set_subscribe_rules([{"type": "include", "kind": "audio", "priority": HUGE}])
        assert info.value.code == 53215 and bob.state == "connected"
        path = f"/v1/Rooms/{bob.sid}/Participants/{bob.local_participant.sid}/SubscribeRules"
        # REST bodies stop at 64 KiB (413) before any rule is read: 60 KB is what fits.
        for rules in ([{"type": "include", "kind": "audio", "priority": "h" * 60_000}], [{"type": "include", "all": True}, {"type": "exclude", "kind": "video", "priority": "urgent"}]):
            status, body = await raw(server.http, server.credentials, "POST", path, data={"Rules": json.dumps(rules)})
            assert (status, body["code"]) == (400, 53215), body["message"]
        good = [{"type": "include", "kind": "audio", "priority": "high"}]
        status, body = await raw(server.http, server.credentials, "POST", path, data={"Rules": json.dumps(good)})
        assert status == 200 and body["rules"] == good, body
        status, body = await raw(server.http, server.credentials, "GET", path)
        assert status == 200 and body["rules"] == good, body
    finally:
        await bob.disconnect()
    await wait_for(lambda: server.registry.find_in_progress("room") is None, message="the room to end")
