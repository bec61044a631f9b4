"""Synthetic media for bots, tests and benchmarks: video frames that carry a frame
counter in their pixels (readable back after any codec), and a tone."""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import numpy as np
from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame

WIDTH, HEIGHT = 320, 240
BITS = 12
BLOCK = 20  # pixels per bit block: survives VP8/H264 compression at any sane bitrate
VIDEO_CLOCK = 90000


def draw_counter(counter: int) -> VideoFrame:
    """A grey frame with ``counter`` as a row of black/white blocks (MSB first)."""
    y = np.full((HEIGHT, WIDTH), 128, dtype=np.uint8)
    for bit in range(BITS):
        value = 235 if (counter >> (BITS - 1 - bit)) & 1 else 16
        x0 = 10 + bit * (BLOCK + 4)
        y[100 : 100 + BLOCK, x0 : x0 + BLOCK] = value
    u = np.full((HEIGHT // 2, WIDTH // 2), 128, dtype=np.uint8)
    frame = VideoFrame.from_ndarray(np.concatenate([y, u.reshape(-1, WIDTH), u.reshape(-1, WIDTH)]), format="yuv420p")
    return frame


def read_counter(frame: VideoFrame) -> int:
    """Read back the counter drawn by ``draw_counter`` from a decoded frame."""
    if frame.width != WIDTH or frame.height != HEIGHT:
        frame = frame.reformat(width=WIDTH, height=HEIGHT)
    y = frame.to_ndarray(format="gray")
    counter = 0
    for bit in range(BITS):
        x0 = 10 + bit * (BLOCK + 4)
        block = y[100 + 5 : 100 + BLOCK - 5, x0 + 5 : x0 + BLOCK - 5]
        counter = (counter << 1) | (1 if float(block.mean()) > 128 else 0)
    return counter


class CounterVideoTrack(MediaStreamTrack):
    """30 fps frames numbered 0, 1, 2, ... (mod 4096), paced in real time."""

    kind = "video"

    def __init__(self, fps: int = 30) -> None:
        super().__init__()
        self.fps = fps
        self.counter = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self.counter / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = draw_counter(self.counter % (1 << BITS))
        frame.pts = int(self.counter * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.counter += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames at 48 kHz, paced in real time. ``level_dbov`` sets its
    loudness (0 loudest, 127 silence; what aiortc writes in the RFC 6464 audio level
    extension) and may change while it plays; None: the default amplitude (about -15 dBov)."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, level_dbov: int | None = None) -> None:
        super().__init__()
        self.frequency = frequency
        self.level_dbov = level_dbov
        self.samples = 960
        self.rate = 48000
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._sent / self.rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(self.samples) + self._sent) / self.rate
        pcm = (np.sin(2 * math.pi * self.frequency * t) * self._amplitude()).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, self.rate)
        self._sent += self.samples
        return frame

    def _amplitude(self) -> float:
        level = self.level_dbov
        if level is None:
            return 8000.0
        if level >= 127:
            return 0.0
        return min(32767.0, 32767.0 * math.sqrt(2) * 10 ** (-level / 20))  # a sine's RMS is its peak / sqrt(2)
