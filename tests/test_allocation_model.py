"""The room model's part in issue 12, with the fake media plane of test_room_model: which
priority each subscription gets, the bandwidth profile and hints passed down, and the media
plane's switch-off relayed up."""

from __future__ import annotations

from sfu.contracts import BandwidthProfile

from . import test_room_model
from .test_room_model import Model, transport

model = test_room_model.model  # (the room model's fixture)


async def test_priority_is_the_subscribers_own_else_its_rules_else_the_publishers(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    cam = room.publish(alice, "cam-1", "video", "cam", priority="low")
    assert cam.source is not None
    alice.on_publication_ready(cam.source)
    sink = transport(bob).sinks[cam.sid]
    assert sink.priority == "low"  # the publisher's
    assert cam.describe()["priority"] == "low"  # (what the others see)

    room.set_track_priority(alice, cam, "high")  # LocalTrackPublication.setPriority
    assert sink.priority == "high"
    room.set_subscribe_rules(bob, [{"type": "include", "all": True}, {"type": "include", "kind": "video", "priority": "standard"}])
    assert sink.priority == "standard"  # the subscriber's rule beats the publisher
    assert room.set_subscription_hints(bob, cam.sid, priority="low")  # RemoteVideoTrack.setPriority
    assert sink.priority == "low"
    room.set_subscription_hints(bob, cam.sid, priority=None)  # back to the rules'
    assert sink.priority == "standard"
    room.set_bandwidth_profile(bob, BandwidthProfile(mode="presentation"))
    assert transport(bob).profile == BandwidthProfile(mode="presentation") and sink.priority == "standard"


async def test_hints_go_down_and_switches_come_up_as_subscription_state(model: Model) -> None:
    room = model.room()
    alice, bob = await room.join("alice"), await room.join("bob")
    cam = room.publish(alice, "cam-1", "video", "cam")
    mic = room.publish(alice, "mic-1", "audio", "mic")
    for track in (cam, mic):
        assert track.source is not None
        alice.on_publication_ready(track.source)
    assert room.set_subscription_hints(bob, cam.sid, render_dimensions=(320, 180))
    assert transport(bob).hints[cam.sid] == ((320, 180), False)
    assert room.set_subscription_hints(bob, cam.sid, switched_off=True)
    assert transport(bob).hints[cam.sid] == ((320, 180), True)  # the size is kept
    assert not room.set_subscription_hints(bob, mic.sid, switched_off=True)  # audio is never switched off
    assert not room.set_subscription_hints(bob, "MT-unknown", switched_off=True)

    # 'disabled': the subscriber's switch-offs are ignored.
    room.set_bandwidth_profile(bob, BandwidthProfile(client_track_switch_off_control="disabled"))
    assert transport(bob).hints[cam.sid] == ((320, 180), False)

    switched: list[tuple[str, bool, str | None]] = []
    bob.on("track_switched", lambda sub: switched.append((sub.track.sid, sub.switched_off, sub.switch_off_reason)))
    sink = transport(bob).sinks[cam.sid]
    bob.on_sink_switched(sink, True, "network-congestion")
    entry = next(t for t in bob.subscribed_state()["tracks"] if t["sid"] == cam.sid)
    assert entry["switched_off"] is True and entry["switch_off_reason"] == "network-congestion"
    bob.on_sink_switched(sink, False, None)
    assert switched == [(cam.sid, True, "network-congestion"), (cam.sid, False, None)]
    assert "switched_off" not in next(t for t in bob.subscribed_state()["tracks"] if t["sid"] == mic.sid)
