"""The room model relays audio activity and network quality (fake media plane, manual clock)."""

from __future__ import annotations

from sfu import speakers
from sfu.participant import Participant

from . import test_room_model
from .test_room_model import Model, transport

model = test_room_model.model  # (the fixture: a registry over a fake media plane and a manual clock)


def speak(model: Model, p: Participant, track_sid: str, level: float) -> None:
    source = p.published[track_sid].source
    assert source is not None
    p.on_audio_activity(source, level)


async def test_the_dominant_speaker_moves_to_whoever_speaks_long_enough(model: Model) -> None:
    room = model.room()
    alice, bob, carol = [await room.join(n) for n in ("alice", "bob", "carol")]
    mics = {p.identity: model.ready(p, "mic", "audio").sid for p in (alice, bob, carol)}
    cam = model.ready(bob, "cam", "video").sid
    changes: list[str | None] = []
    room.on("dominant_speaker_changed", lambda p: changes.append(p.identity if p else None))
    speaking: list[set[str]] = []
    room.on("speaking_changed", speaking.append)

    speak(model, alice, mics["alice"], 0.8)
    assert speaking[-1] == {alice.sid} and changes == []
    model.clock.advance(speakers.FIRST_SPEAKER_TIME + 0.05)  # (the room's timer decides)
    assert changes == ["alice"] and room.dominant_speaker is alice

    speak(model, alice, mics["alice"], 0.0)
    speak(model, bob, mics["bob"], 0.6)
    model.clock.advance(speakers.MIN_SPEAKING_TIME / 2)
    assert changes == ["alice"]
    model.clock.advance(speakers.MIN_SPEAKING_TIME)
    assert changes == ["alice", "bob"]
    # Every subscriber's transport learns the speaker's tracks (for the allocator).
    assert transport(carol).dominant_speaker_tracks == {mics["bob"], cam}

    await room.remove(bob)
    assert changes == ["alice", "bob", None] and room.dominant_speaker is None
    assert transport(carol).dominant_speaker_tracks == frozenset()


async def test_network_quality_reports_reach_the_participant_and_the_room(model: Model) -> None:
    room = model.room()
    alice = await room.join("alice")
    seen: list[tuple[str, int | None]] = []
    room.on("network_quality_changed", lambda p: seen.append((p.identity, p.network_quality_level)))
    assert alice.network_quality_level is None
    alice.on_network_quality(3, {"level": 3, "audio": None, "video": None})
    assert seen == [("alice", 3)] and alice.network_quality_stats == {"level": 3, "audio": None, "video": None}
