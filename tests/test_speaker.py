"""Dominant speaker end to end: Python clients whose tones carry different RFC 6464 levels
(aiortc writes each frame's level in the audio level extension); the server decides from
those levels alone and tells the clients that asked (``dominant_speaker=True``)."""

from __future__ import annotations

from pathlib import Path

from sfu.workers.pool import RemoteMediaPlane
from signaling.client import LocalAudioTrack, Room, connect

from .conftest import Server, running_server, wait_for
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


async def test_dominant_speaker_and_network_quality_through_media_workers(tmp_path: Path, netns: None) -> None:
    """With ``--workers 2`` the levels and quality come from a worker process over its channel,
    and the dominant speaker goes back down to the worker's transports."""
    async with running_server(tmp_path, workers=2) as (server, _):
        clients = Clients(server)
        try:
            alice_tone, bob_tone = ToneAudioTrack(level_dbov=LOUD), ToneAudioTrack(level_dbov=QUIET)
            await join(clients, server, "alice", alice_tone)
            bob = await join(clients, server, "bob", bob_tone, dominant_speaker=True, network_quality={"local": 2, "remote": 1})
            assert isinstance(server.registry.plane, RemoteMediaPlane)
            await wait_for(lambda: dominant(bob) == "alice", message="alice dominant, decided from a worker's levels")
            alice_tone.level_dbov, bob_tone.level_dbov = QUIET, LOUD
            await wait_for(lambda: dominant(bob) == "bob", message="bob dominant")
            me = bob.local_participant
            await wait_for(lambda: me.network_quality_level is not None, message="bob's network quality from the worker")
            assert me.network_quality_stats is not None and me.network_quality_stats["audio"]["send"] is not None
        finally:
            await clients.close()
