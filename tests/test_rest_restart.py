"""Records survive a crash: rooms, a call's participants, tracks and rules are there after
`sfu serve` is killed with SIGKILL and started again, each in its final state."""

from __future__ import annotations

from pathlib import Path

from twilio.base.exceptions import TwilioRestException

from sfu.credentials import generate
from signaling.client import connect
from signaling.tokens import mint_token

from .helpers.clients import media_tracks
from .conftest import wait_for
from .rest_support import SfuProcess, call, until

AUDIO_ONLY = [{"type": "include", "kind": "audio"}]


async def test_records_survive_sigkill_and_restart(tmp_path: Path, netns: None) -> None:
    credentials = generate()
    first = await call(SfuProcess(tmp_path, credentials).start)
    try:
        rooms = first.client().video.v1.rooms
        live = await call(rooms.create, unique_name="kept", recording_rules={"rules": AUDIO_ONLY})
        done = await call(rooms.create, unique_name="done")
        done = await call(rooms(done.sid).update, status="completed")
        ws = f"ws://127.0.0.1:{first.port}/signaling"
        alice = await connect(ws, mint_token(credentials, "alice"), name="kept", tracks=media_tracks("va"))
        bob = await connect(ws, mint_token(credentials, "bob"), name="kept")
        participants = rooms(live.sid).participants
        alice_sid, bob_sid = alice.local_participant.sid, bob.local_participant.sid
        await call(participants(bob_sid).subscribe_rules.update, rules=AUDIO_ONLY)
        await until(participants(alice_sid).published_tracks.list, lambda ts: {t.name for t in ts} == {"cam", "mic"}, "tracks")
        await until(participants(bob_sid).subscribed_tracks.list, lambda ts: [t.kind for t in ts] == ["audio"], "rules")
        first.kill()
    finally:
        first.kill()

    second = await call(SfuProcess(tmp_path, credentials, port=first.port).start)
    try:
        # The clients notice on their own: their sessions did not survive (53002) or nobody answers.
        await wait_for(lambda: alice.state == bob.state == "disconnected", message="the clients to give up")
        rooms = second.client().video.v1.rooms
        ended = await call(rooms(live.sid).fetch)
        assert ended.status == "completed" and ended.end_time is not None and ended.duration is not None
        assert ended.unique_name == "kept" and ended.url == f"{second.http}/v1/Rooms/{live.sid}"
        try:
            await call(rooms("kept").fetch)
            raise AssertionError("a completed room must not be found by its name")
        except TwilioRestException as exc:
            assert (exc.status, exc.code) == (404, 20404)
        again = await call(rooms(done.sid).fetch)
        assert (again.status, again.end_time, again.duration) == ("completed", done.end_time, done.duration)
        assert await call(rooms.list) == []
        assert {r.sid for r in await call(rooms.list, status="completed")} == {live.sid, done.sid}

        participants = rooms(live.sid).participants
        after = {p.identity: p for p in await call(participants.list)}  # a completed room lists everyone
        assert set(after) == {"alice", "bob"}
        for p in after.values():
            assert p.status == "disconnected" and p.end_time is not None and p.duration is not None
        assert await call(participants(alice_sid).published_tracks.list) == []
        assert await call(participants(bob_sid).subscribed_tracks.list) == []
        assert (await call(participants(bob_sid).subscribe_rules.fetch)).rules == AUDIO_ONLY
        assert (await call(rooms(live.sid).recording_rules.fetch)).rules == AUDIO_ONLY
    finally:
        second.stop()
