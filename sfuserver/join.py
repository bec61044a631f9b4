"""``sfu join``: a headless participant for trying the server from a terminal.

It publishes a synthetic camera (a frame counter), a tone and a ``chat`` data track,
prints what happens in the room, and sends each line typed on stdin as a chat message.
"""

from __future__ import annotations

import asyncio
import sys

from signaling.client import (
    LocalAudioTrack,
    LocalDataTrack,
    LocalVideoTrack,
    RemoteDataTrack,
    RemoteMediaTrack,
    RemoteParticipant,
    SignalingError,
    connect,
)
from signaling.sources import CounterVideoTrack, ToneAudioTrack, read_counter


def _say(text: str) -> None:
    print(text, flush=True)


async def _watch_video(track: RemoteMediaTrack, who: str) -> None:
    """Decode the remote video and report its frame counter once a second."""
    frames = 0
    try:
        while True:
            frame = await track.recv()
            frames += 1
            if frames % 30 == 1:
                _say(f"  video from {who}: frame {frames}, counter {read_counter(frame)}")
    except Exception:
        return


async def join(url: str, token: str, room_name: str | None, duration: float | None) -> int:
    chat = LocalDataTrack("chat")
    try:
        room = await connect(
            url, token, name=room_name,
            tracks=[LocalVideoTrack(CounterVideoTrack(), "camera"), LocalAudioTrack(ToneAudioTrack(), "microphone"), chat],
        )
    except SignalingError as exc:
        _say(f"refused: {exc.code} {exc.message}")
        return 1
    _say(f"joined room {room.name} ({room.sid}) as {room.local_participant.identity}")
    for p in room.participants.values():
        _say(f"  already here: {p.identity}")
    tasks: set[asyncio.Task[None]] = set()

    def on_subscribed(track: object, publication: object, participant: RemoteParticipant) -> None:
        _say(f"subscribed to {participant.identity}'s {getattr(track, 'kind')} track {getattr(publication, 'track_name')}")
        if isinstance(track, RemoteDataTrack):
            track.on("message", lambda message: _say(f"<{participant.identity}> {message}"))
        elif isinstance(track, RemoteMediaTrack) and track.kind == "video":
            task = asyncio.ensure_future(_watch_video(track, participant.identity))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    room.on("participant_connected", lambda p: _say(f"{p.identity} joined"))
    room.on("participant_disconnected", lambda p: _say(f"{p.identity} left"))
    room.on("track_subscribed", on_subscribed)
    room.on("track_disabled", lambda pub, p: _say(f"{p.identity} muted {pub.track_name}"))
    room.on("track_enabled", lambda pub, p: _say(f"{p.identity} unmuted {pub.track_name}"))
    ended = asyncio.Event()

    def on_disconnected(error: SignalingError | None) -> None:
        _say(f"disconnected: {error.code} {error.message}" if error else "disconnected")
        ended.set()

    room.on("disconnected", on_disconnected)

    loop = asyncio.get_running_loop()
    if sys.stdin.isatty() or not sys.stdin.closed:
        def on_line() -> None:
            line = sys.stdin.readline()
            if not line:
                loop.remove_reader(sys.stdin)
                return
            if line.strip():
                chat.send(line.rstrip("\n"))

        try:
            loop.add_reader(sys.stdin, on_line)
        except (OSError, ValueError, NotImplementedError):
            pass
    try:
        await asyncio.wait_for(ended.wait(), duration)
    except asyncio.TimeoutError:
        pass
    finally:
        await room.disconnect()
    return 0
