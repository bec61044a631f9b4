"""Dominant speaker end to end: Python clients whose tones carry different RFC 6464 levels
(aiortc writes each frame's level in the audio level extension); the server decides from
those levels alone and tells the clients that asked (``dominant_speaker=True``)."""

from __future__ import annotations

from signaling.client import LocalAudioTrack, Room, connect

from .conftest import Server, wait_for
from .helpers.clients import Clients
from .media import ToneAudioTrack

LOUD = 10  # -10 dBov
QUIET = 70  # background noise: under the voice threshold
SILENT = 127


async def join(clients: Clients, server: Server, identity: str, tone: ToneAudioTrack, **options: object) -> Room:
    room = await connect(
        server.url, server.token(identity), name="speakers", tracks=[LocalAudioTrack(tone, "mic")], **options  # type: ignore[arg-type]
    )
    clients.rooms.append(room)
    return room


def dominant(room: Room) -> str | None:
    return room.dominant_speaker.identity if room.dominant_speaker is not None else None


async def test_the_dominant_speaker_moves_when_another_participant_becomes_loud(server: Server, clients: Clients) -> None:
    alice_tone, bob_tone = ToneAudioTrack(level_dbov=LOUD), ToneAudioTrack(level_dbov=QUIET)
    alice = await join(clients, server, "alice", alice_tone)
    bob = await join(clients, server, "bob", bob_tone, dominant_speaker=True)
    carol = await join(clients, server, "carol", ToneAudioTrack(level_dbov=SILENT), dominant_speaker=True)
    seen: list[str | None] = []
    carol.on("dominant_speaker_changed", lambda p: seen.append(p.identity if p is not None else None))

    await wait_for(lambda: dominant(carol) == "alice", message="alice dominant for carol")
    await wait_for(lambda: dominant(bob) == "alice", message="alice dominant for bob")
    assert carol.speaking == {alice.local_participant.sid}
    assert alice.dominant_speaker is None  # alice did not ask for it

    alice_tone.level_dbov, bob_tone.level_dbov = QUIET, LOUD
    await wait_for(lambda: dominant(carol) == "bob", message="bob dominant for carol")
    await wait_for(lambda: dominant(bob) == "bob", message="bob dominant for himself (the local participant)")
    assert bob.dominant_speaker is bob.local_participant
    assert seen == ["alice", "bob"], seen  # no flapping on the way

    # Both loud alike: bob keeps it (alice is not clearly louder).
    alice_tone.level_dbov = LOUD
    await wait_for(lambda: alice.local_participant.sid in carol.speaking, message="alice speaking again")
    room = server.registry.rooms[carol.sid]
    levels = room.speakers.levels
    a, b = alice.local_participant.sid, bob.local_participant.sid
    await wait_for(lambda: abs(levels[a] - levels[b]) < 0.05, message="alice as loud as bob")
    assert room.speakers.due_at is None  # no challenger pending
    assert dominant(carol) == "bob" and seen == ["alice", "bob"]

    await bob.disconnect()
    await wait_for(lambda: dominant(carol) != "bob", message="bob gone")
    assert seen[2] in (None, "alice"), seen
