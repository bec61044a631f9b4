"""Pre-encoded media for load publishers, and the publisher that sends it without encoding.

The clip is made once (PyAV's libvpx and libopus encoders) at setup time and cached under
``benchmarks/out/media``; nothing is encoded while a benchmark runs. A publisher loops the
clip with continuous, evenly spaced send times and continuous RTP timestamps, and answers
PLI/FIR with a keyframe: every frame of the clip also exists as an intra-only encoding, so
the keyframe is the current picture, as a browser would send it.

Video RTP timestamps carry a small per-publisher pattern (``jitter``): frame ``k`` has
timestamp ``origin + 3000 k + jitter(salt, k)`` with ``jitter`` one of 0, 10, ..., 80 ticks
(under 1 ms). The send times stay evenly spaced. A forwarding server shifts timestamps by a
constant per subscriber, so the pattern lets the analysis find which publisher frame a
probe subscriber received, without touching the payload (see ``metrics.match_latency``).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import os
import pickle
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FPS = 30
VIDEO_CLOCK = 90000
VIDEO_STEP = VIDEO_CLOCK // FPS
AUDIO_STEP = 960  # 20 ms at 48 kHz
AUDIO_INTERVAL = 0.020
CLIP_SECONDS = 6
WIDTH, HEIGHT = 640, 480
VIDEO_BITRATE = 1_500_000
AUDIO_BITRATE = 32_000
CLIP_VERSION = 4
JITTER_TICKS = 90  # under 1 ms at 90 kHz
JITTER_QUANTUM = 10

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

_HEADER = struct.Struct("!BBHII")


def jitter(salt: int, k: int) -> int:
    """Deterministic pseudo-random offset for frame ``k``: a multiple of JITTER_QUANTUM in
    [0, JITTER_TICKS). Coarse steps survive servers that round timestamps by a tick or two
    (aiortc's decode/re-encode path does)."""
    x = (k * 2654435761 + salt * 40503 + 0x9E3779B9) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 2246822519) & 0xFFFFFFFF
    x ^= x >> 13
    return JITTER_QUANTUM * (x % (JITTER_TICKS // JITTER_QUANTUM))


@dataclass
class Clip:
    """RTP payloads per frame: VP8 (normal and intra-only) and Opus."""

    video: list[list[bytes]]  # frame -> VP8 RTP payloads (descriptor included)
    video_key: list[list[bytes]]  # the same pictures, each encoded as a keyframe
    audio: list[bytes]  # 20 ms Opus packets

    @property
    def video_bitrate(self) -> float:
        total = sum(len(p) for frame in self.video for p in frame)
        return total * 8 / (len(self.video) / FPS)

    @property
    def video_packets_per_second(self) -> float:
        return sum(len(frame) for frame in self.video) / (len(self.video) / FPS)


def _picture(i: int, rng: Any) -> Any:
    import numpy as np

    y = np.arange(HEIGHT, dtype=np.int32)[:, None]
    x = np.arange(WIDTH, dtype=np.int32)[None, :]
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    img[..., 0] = ((x + 4 * i) ^ y) & 0xFF
    img[..., 1] = ((y + 3 * i) * 2) & 0xFF
    img[..., 2] = (x * y // 64 + 7 * i) & 0xFF
    # moving noisy block: keeps the encoder at its bitrate every frame
    bx, by = (37 * i) % (WIDTH - 160), (23 * i) % (HEIGHT - 120)
    img[by : by + 120, bx : bx + 160] = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    return img


def _encode_video(intra: bool) -> list[bytes]:
    import av
    import numpy as np

    rng = np.random.default_rng(1234)
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = WIDTH, HEIGHT
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.bit_rate = VIDEO_BITRATE * (2 if intra else 1)
    codec.gop_size = 1 if intra else 10 * FPS
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"}
    out: list[bytes] = []
    for i in range(CLIP_SECONDS * FPS):
        frame = av.VideoFrame.from_ndarray(_picture(i, rng), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        if intra:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in codec.encode(frame):
            out.append(bytes(packet))
    for packet in codec.encode(None):
        out.append(bytes(packet))
    return out[: CLIP_SECONDS * FPS]


def _encode_audio() -> list[bytes]:
    import av
    import numpy as np

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = AUDIO_BITRATE
    codec.time_base = fractions.Fraction(1, 48000)
    codec.options = {"frame_duration": "20", "application": "voip"}
    t = np.arange(CLIP_SECONDS * 48000) / 48000
    tone = (np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)) * 8000).astype(np.int16)
    stereo = np.repeat(tone[None, :], 2, axis=0).T.reshape(1, -1)
    out: list[bytes] = []
    for i in range(0, tone.shape[0], AUDIO_STEP):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, 2 * i : 2 * (i + AUDIO_STEP)]), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i
        for packet in codec.encode(frame):
            out.append(bytes(packet))
    for packet in codec.encode(None):
        out.append(bytes(packet))
    return out


def _packetize_vp8(frames: list[bytes]) -> list[list[bytes]]:
    from aiortc.codecs.vpx import Vp8Encoder

    return [Vp8Encoder._packetize(data, i % (1 << 15)) for i, data in enumerate(frames)]


def build_clip(cache_dir: Path) -> Path:
    """Encode the clip once; later calls return the cached file."""
    path = cache_dir / f"clip-v{CLIP_VERSION}-{WIDTH}x{HEIGHT}-{VIDEO_BITRATE // 1000}k.pickle"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    video = _encode_video(intra=False)
    video_key = _encode_video(intra=True)
    if len(video_key) != len(video):
        raise RuntimeError(f"intra-only pass gave {len(video_key)} frames for {len(video)}")
    clip = Clip(_packetize_vp8(video), _packetize_vp8(video_key), _encode_audio())
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(clip))
    os.replace(tmp, path)
    return path


def load_clip(path: Path) -> Clip:
    clip = pickle.loads(path.read_bytes())
    assert isinstance(clip, Clip)
    return clip


# --- the publisher ------------------------------------------------------------------------


def _extension_block(elements: bytes) -> bytes:
    if not elements:
        return b""
    padded = elements + b"\x00" * (-len(elements) % 4)
    return struct.pack("!HH", 0xBEDE, len(padded) // 4) + padded


class PacketSource:
    """One published track: sends the clip's RTP payloads straight to the SRTP writer.

    It is an aiortc ``MediaStreamTrack`` (so it can be added to a peer connection and be
    described in SDP) whose sender is started by :func:`install_fast_sender` instead of
    aiortc's encode-and-packetize loop. Per packet: one ``struct.pack`` for the header,
    SRTP protect, ``sendto``.
    """

    def __init__(self, kind: str, clip: Clip, salt: int, on_video_sent: Callable[[int, float], None] | None = None) -> None:
        from aiortc import MediaStreamTrack

        class _Track(MediaStreamTrack):
            async def recv(self_inner) -> Any:  # never called: the sender is replaced
                await asyncio.Event().wait()

        self.track = _Track()
        self.track.kind = kind
        self.track._bench_source = self  # type: ignore[attr-defined]
        self.kind = kind
        self.clip = clip
        self.salt = salt
        self.packets_sent = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.keyframes_sent = 0
        self.sent_log: deque[tuple[int, float]] = deque(maxlen=8192)  # (rtp timestamp, send time), video
        self._want_key = False
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False

    def request_keyframe(self) -> None:
        self._want_key = True

    def start(self, sender: Any, parameters: Any, write: Callable[[bytes], bool]) -> None:
        codec = parameters.codecs[0]
        expected = "video/vp8" if self.kind == "video" else "audio/opus"
        if codec.mimeType.lower() != expected:
            raise RuntimeError(f"negotiated {codec.mimeType}, the clip is {expected}")
        ids = {ext.uri: ext.id for ext in parameters.headerExtensions}
        self.begin(codec.payloadType, sender._ssrc, ids.get(MID_URI), parameters.muxId, ids.get(AUDIO_LEVEL_URI), write)

    def begin(self, pt: int, ssrc: int, mid_id: int | None, mid: str | None, level_id: int | None,
              write: Callable[[bytes], bool]) -> None:
        """Start sending with these RTP parameters: the MID header extension when ``mid_id``
        and ``mid`` are given, the audio level one (audio only) when ``level_id`` is."""
        self._pt = pt
        elements = b""
        if mid_id and mid:
            encoded = mid.encode()
            elements += bytes(((mid_id << 4) | (len(encoded) - 1),)) + encoded
        if level_id and self.kind == "audio":
            elements += bytes(((level_id << 4), 0x80 | 30))  # voice, -30 dBov
        self._ext = _extension_block(elements)
        self._b0 = 0x90 if self._ext else 0x80
        self._ssrc = ssrc
        self._seq = random.getrandbits(16)
        self._origin = random.getrandbits(32)
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._k = 0
        self._index = random.randrange(len(clip_frames(self.clip, self.kind)))
        self._t0 = self._loop.time() + random.random() * (1 / FPS if self.kind == "video" else AUDIO_INTERVAL)
        self._interval = 1 / FPS if self.kind == "video" else AUDIO_INTERVAL
        self._want_key = self.kind == "video"  # a browser starts with a keyframe
        self._handle = self._loop.call_at(self._t0, self._tick)

    def _tick(self) -> None:
        if self._stopped:
            return
        k = self._k
        self._k = k + 1
        if self.kind == "video":
            n = len(self.clip.video)
            index = (self._index + k) % n
            if self._want_key:
                self._want_key = False
                self.keyframes_sent += 1
                payloads = self.clip.video_key[index]
            else:
                payloads = self.clip.video[index]
            ts = (self._origin + VIDEO_STEP * k + jitter(self.salt, k)) & 0xFFFFFFFF
        else:
            n = len(self.clip.audio)
            payloads = [self.clip.audio[(self._index + k) % n]]
            ts = (self._origin + AUDIO_STEP * k) & 0xFFFFFFFF
        last = len(payloads) - 1
        b0, pt, ssrc, ext, write = self._b0, self._pt, self._ssrc, self._ext, self._write
        seq = self._seq
        sent = 0
        for i, payload in enumerate(payloads):
            data = _HEADER.pack(b0, pt | (0x80 if i == last else 0), seq, ts, ssrc) + ext + payload
            if write(data):
                sent += 1
                self.bytes_sent += len(data)
            seq = (seq + 1) & 0xFFFF
        self._seq = seq
        self.packets_sent += sent
        self.frames_sent += 1
        if self.kind == "video":
            self.sent_log.append((ts, time.monotonic()))
        next_at = self._t0 + self._k * self._interval
        now = self._loop.time()
        if next_at < now - 1.0:  # more than a second behind: start the schedule again
            self._t0 = now - self._k * self._interval
            next_at = now
        self._handle = self._loop.call_at(next_at, self._tick)

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()


def clip_frames(clip: Clip, kind: str) -> list[Any]:
    return clip.video if kind == "video" else clip.audio


def install_fast_sender() -> None:
    """Make aiortc start a :class:`PacketSource`'s sender without its encoder loop.

    Applies to tracks made by :class:`PacketSource` only (directly, or wrapped by the
    project's client in its enable/disable gate); any other sender starts as usual.
    PLI/FIR reach aiortc's ``_handle_rtcp_packet``, which calls ``_send_keyframe``: that is
    pointed at the source. No sender reports are sent (aiortc's RTCP loop is not started).
    """
    from aiortc import RTCRtpSender

    from sfu.media.aiortc_hooks import rtp_writer

    if getattr(RTCRtpSender, "_bench_fast_sender", False):
        return
    original = RTCRtpSender.send

    async def send(self: Any, parameters: Any) -> None:
        track = self.track
        source = getattr(track, "_bench_source", None) or getattr(getattr(track, "_source", None), "_bench_source", None)
        if source is None:
            await original(self, parameters)
            return
        if getattr(self, "_bench_started", False):
            return
        self._bench_started = True
        self.transport._register_rtp_sender(self, parameters)
        self._send_keyframe = source.request_keyframe
        source.start(self, parameters, rtp_writer(self.transport))

    RTCRtpSender.send = send  # type: ignore[method-assign]
    RTCRtpSender._bench_fast_sender = True  # type: ignore[attr-defined]
