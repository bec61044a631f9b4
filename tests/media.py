"""Test media (see signaling.sources), and reading the counter back from a remote track."""

from __future__ import annotations

import asyncio
from typing import Any

from av import VideoFrame

from signaling.sources import BITS, CounterVideoTrack, ToneAudioTrack, draw_counter, read_counter

__all__ = ["BITS", "CounterVideoTrack", "ToneAudioTrack", "draw_counter", "read_counter", "read_counters"]


async def read_counters(track: Any, count: int, timeout: float = 20.0) -> list[int]:
    """Decode ``count`` frames from a remote video track and read their counters."""
    values = []
    while len(values) < count:
        frame = await asyncio.wait_for(track.recv(), timeout)
        assert isinstance(frame, VideoFrame)
        values.append(read_counter(frame))
    return values
