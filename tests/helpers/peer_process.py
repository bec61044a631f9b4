"""A participant in its own process, for tests that kill it.

Usage: python -m tests.helpers.peer_process URL TOKEN ROOM
Joins ROOM publishing the counter video, prints ``connected <participant sid>`` and stays
until killed.
"""

from __future__ import annotations

import asyncio
import sys

from signaling.client import LocalVideoTrack, connect

from ..media import CounterVideoTrack


async def main(url: str, token: str, room_name: str) -> None:
    room = await connect(url, token, name=room_name, tracks=[LocalVideoTrack(CounterVideoTrack(), "cam")])
    print("connected", room.local_participant.sid, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
