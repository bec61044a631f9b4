"""Overload degrades, never collapses: the guard sheds video (lowest priority, newest first)
while the event loop lags and lets it back when the loop is on time again.

The policy is driven here with made-up lag and time; the end-to-end test runs a real server
in its own process whose video forwarding is made artificially expensive (so the loop
really falls behind, and shedding really relieves it)."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
from aiortc.rtp import RtpPacket

from sfu.media.consumer import Consumer
from sfu.media.overload import Level, OverloadGuard, OverloadSettings
from sfu.media.producer import CodecInfo, Producer

from .conftest import wait_for

VP8 = CodecInfo(97, "video/VP8", 90000, ("video/vp8",))
OPUS = CodecInfo(111, "audio/opus", 48000, ("audio/opus",))
EXTENSIONS = [Ext(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid")]
KEYFRAME = b"\x10\x00" + b"k" * 40
DELTA = b"\x10\x01" + b"d" * 40


def packet(seq: int, payload: bytes = DELTA, pt: int = 97, ssrc: int = 1111) -> bytes:
    p = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=seq * 3000)
    p.ssrc = ssrc
    p.payload = payload
    return p.serialize()


class Room:
    """One video and one audio producer, consumers made on demand, a guard driven by hand."""

    def __init__(self, **settings: float) -> None:
        self.guard = OverloadGuard(OverloadSettings(**settings), probe=False)  # type: ignore[arg-type]
        self.plis: list[int] = []
        self.video = Producer("MTv", "video", self.plis.append, lambda ssrc, lost: None)
        self.video.configure([VP8], {}, 0, 1, True)
        self.video.set_ssrcs(1111, None)
        self.audio = Producer("MTa", "audio", lambda ssrc: None, lambda ssrc, lost: None)
        self.audio.configure([OPUS], {}, 0, 1, False)
        self.audio.set_ssrcs(3333, None)
        self.sent: dict[Consumer, list[bytes]] = {}
        self.seq = 100
        self.now = 0.0

    def consumer(self, producer: Producer, priority: str = "standard") -> Consumer:
        sent: list[bytes] = []
        consumer = Consumer(producer, lambda data: sent.append(data) or True, 5000 + len(self.sent), 9000 + len(self.sent), guard=self.guard)
        consumer.priority = priority
        consumer.configure([VP8] if producer.kind == "video" else [OPUS], {}, EXTENSIONS, "0")
        consumer.attach()
        self.sent[consumer] = sent
        return consumer

    def media(self, keyframe: bool = False) -> None:
        self.seq += 1
        self.video.on_rtp(packet(self.seq, KEYFRAME if keyframe else DELTA))
        self.audio.on_rtp(packet(self.seq, b"\x01" * 20, pt=111, ssrc=3333))

    def lag(self, seconds: float, lateness: float, probe: float = 0.05) -> None:
        """``seconds`` of probes every ``probe`` s, each ``lateness`` s late."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += probe
            self.guard.observe(lateness, self.now)


async def test_a_passing_hiccup_sheds_nothing() -> None:
    room = Room()
    viewers = [room.consumer(room.video) for _ in range(4)]
    room.lag(5.0, 0.004)
    room.lag(0.3, 0.400)  # a long stall, but short
    room.lag(5.0, 0.004)
    assert room.guard.shed_total == 0 and all(v.forwarding for v in viewers)
    assert room.guard.peak_lag >= 0.4


async def test_sustained_lag_sheds_video_lowest_priority_then_newest_first_and_never_audio() -> None:
    room = Room()
    high = room.consumer(room.video, "high")
    old, newer, newest = (room.consumer(room.video) for _ in range(3))
    low = room.consumer(room.video, "low")
    listeners = [room.consumer(room.audio) for _ in range(3)]
    room.media(keyframe=True)
    assert room.guard.registered == 5  # audio consumers never register: audio is never shed

    room.lag(0.9, 0.2)  # overloaded, but not for long enough yet
    assert room.guard.level == Level.OVERLOADED and room.guard.shed_total == 0
    shed_order: list[Consumer] = []
    for _ in range(100):
        room.lag(0.05, 0.2)
        shed_order += [c for c in (high, old, newer, newest, low) if c.shed and c not in shed_order]
        if len(shed_order) == 3:
            break
    assert shed_order == [low, newest, newer]  # one at a time (10% of five, at least one)
    assert room.guard.shed_steps == 3 and room.guard.shed_now == 3
    assert room.video.forwarding == [high, old]

    before = {c: len(s) for c, s in room.sent.items()}
    room.media()
    assert {c for c, s in room.sent.items() if len(s) > before[c]} == {high, old, *listeners}


async def test_once_on_time_again_shed_video_comes_back_best_first_at_a_keyframe() -> None:
    room = Room(calm=2.0)
    viewers = [room.consumer(room.video, p) for p in ("high", "standard", "low")]
    room.media(keyframe=True)
    room.lag(3.0, 0.2)
    assert all(v.shed for v in viewers)
    room.lag(1.0, 0.0)  # the smoothed lag falls below the low mark...
    assert room.guard.level == Level.NORMAL and room.guard.resumed_total == 0
    plis = len(room.plis)
    room.lag(1.8, 0.0)  # ... and stays there for the calm period: the best one comes back
    assert [v.shed for v in viewers] == [False, True, True]
    assert viewers[0].waiting_for_keyframe  # no burst from the cache, but an urgent PLI
    await wait_for(lambda: len(room.plis) == plis + 1, message="the PLI for the resumed consumer")
    before = len(room.sent[viewers[0]])
    room.media()
    assert len(room.sent[viewers[0]]) == before  # not mid-GOP
    room.media(keyframe=True)
    assert len(room.sent[viewers[0]]) == before + 1
    room.lag(5.0, 0.0)
    assert not any(v.shed for v in viewers) and room.guard.resumed_total == 3 and room.guard.shed_now == 0


async def test_resuming_into_overload_again_backs_off() -> None:
    room = Room(calm=2.0)
    viewers = [room.consumer(room.video) for _ in range(2)]
    room.lag(3.0, 0.2)
    assert all(v.shed for v in viewers)
    room.lag(3.0, 0.0)
    assert room.guard.resumed_total == 1
    room.lag(2.0, 0.2)  # that was one too many: shed again
    assert room.guard.shed_now == 2
    room.lag(3.0, 0.0)
    assert room.guard.resumed_total == 1  # now it waits twice as long
    room.lag(3.0, 0.0)
    assert room.guard.resumed_total == 2


async def test_a_detached_consumer_leaves_the_guard() -> None:
    room = Room()
    viewer = room.consumer(room.video)
    room.lag(3.0, 0.2)
    assert viewer.shed and room.guard.shed_now == 1
    viewer.detach()
    assert room.guard.registered == 0 and room.guard.shed_now == 0
