"""Network quality scoring (sfu.media.quality): pure functions and the window monitor with
stand-in producers and consumers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sfu.media.quality import (
    LevelSmoother,
    QualityMonitor,
    Sample,
    bandwidth_level,
    latency_level,
    loss_level,
    network_quality,
)
from sfu.media.source import ReceiveStats


def test_each_measure_maps_to_twilios_levels() -> None:
    assert [loss_level(x) for x in (0.0, 0.02, 0.05, 0.1, 0.2, 0.99)] == [5, 4, 3, 2, 1, 0]
    assert latency_level(None, None) == 5
    assert [latency_level(rtt, None) for rtt in (0.05, 0.2, 0.3, 0.5, 1.0)] == [5, 4, 3, 2, 1]
    assert latency_level(0.05, 0.1) == 2  # the worse of round-trip time and jitter
    assert bandwidth_level(500_000, 100_000) == 5
    assert bandwidth_level(60_000, 100_000) == 3
    assert bandwidth_level(500_000, 100_000, available=20_000) == 1  # the estimate caps it
    assert bandwidth_level(0, 0) == 5  # nothing needed


def test_the_transport_level_is_its_worst_direction_and_stats_take_twilios_shape() -> None:
    good = Sample(0.0, 0.05, 0.005, 40_000, 16_000)
    lossy = Sample(0.1, 0.05, 0.005, 40_000, 16_000)
    scored = network_quality({("audio", "send"): good, ("audio", "recv"): lossy})
    assert scored is not None
    level, stats = scored
    assert level == 2 and stats["level"] == 2
    assert stats["audio"]["send"] == 5 and stats["audio"]["recv"] == 2 and stats["video"] is None
    recv = stats["audio"]["recvStats"]
    assert recv["fractionLost"] == {"fractionLost": 0.1, "level": 2}
    assert recv["bandwidth"]["actual"] == 40_000 and recv["latency"]["rtt"] == 0.05
    assert network_quality({}) is None


def test_the_level_falls_at_once_and_rises_one_step_at_a_time() -> None:
    smoother = LevelSmoother()
    assert [smoother.update(x) for x in (5, 1, 5, 5, 5, 5, 2)] == [5, 1, 2, 3, 4, 5, 2]


@dataclass(eq=False)
class FakeProducer:
    kind: str
    stats: ReceiveStats = field(default_factory=ReceiveStats)

    def receive(self, sent: int, lost: int, size: int = 100) -> None:
        """``sent`` packets go out from the publisher, ``lost`` of them never arrive."""
        s = self.stats
        if s.base_seq is None:
            s.base_seq = 0
            s.max_seq = -1
        s.max_seq += sent
        s.packets += sent - lost
        s.octets += (sent - lost) * size


@dataclass
class FakeSendStats:
    packets: int = 0
    octets: int = 0
    fraction_lost: int = 0
    jitter: int = 0
    rtt: float | None = None
    reports: int = 0


@dataclass(eq=False)
class FakeConsumer:
    kind: str
    stats: FakeSendStats = field(default_factory=FakeSendStats)
    estimate: int | None = None

    def remb(self) -> int | None:
        return self.estimate


def test_the_monitor_scores_loss_on_what_the_publisher_sends_and_what_the_subscriber_reports() -> None:
    monitor = QualityMonitor()
    mic = FakeProducer("audio")
    speaker = FakeConsumer("audio")
    windows = []
    for lost, reported in ((0, 0), (0, 0), (15, 0), (0, 0), (0, 64), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)):
        mic.receive(50, lost, size=120)  # 50 packets a second: 48 kbit/s
        speaker.stats.packets += 50
        speaker.stats.octets += 6000
        speaker.stats.reports += 1
        speaker.stats.fraction_lost = reported
        speaker.stats.rtt = 0.02
        monitor.measure([mic], [speaker], 1.0)
        windows.append(monitor.level)
    # The first window only sets the counters; 30% upstream loss, then 25% reported downstream.
    assert windows[:6] == [None, 5, 1, 2, 1, 2], windows
    assert windows[-1] == 5  # recovered, one step a window
    assert monitor.stats is not None and monitor.stats["audio"]["send"] == 5


def test_a_muted_track_counts_for_nothing() -> None:
    monitor = QualityMonitor()
    mic = FakeProducer("audio")
    mic.receive(50, 0)
    monitor.measure([mic], [], 1.0)
    assert not monitor.measure([mic], [], 1.0)  # no packets in the window: nothing to score
    assert monitor.level is None


def test_connect_options_and_entries_follow_twilios_verbosity() -> None:
    from signaling.protocol import ProtocolError, network_quality_entry, quality_options

    assert quality_options(None) == (0, 0) and quality_options(False) == (0, 0)
    assert quality_options(True) == (1, 0)  # Twilio's default: the local level only
    assert quality_options({"local": 0, "remote": 3}) == (1, 3)  # local is at least minimal
    for bad in ({"local": 4}, {"remote": "2"}, [1, 1], 2):
        with pytest.raises(ProtocolError):
            quality_options(bad)
    scored = network_quality({("audio", "send"): Sample(0.1, None, None, 40_000, 8_000)})
    assert scored is not None
    level, stats = scored
    assert network_quality_entry("PA1", level, stats, 1) == {"sid": "PA1", "level": 2}
    moderate = network_quality_entry("PA1", level, stats, 2)["stats"]
    assert moderate == {"level": 2, "audio": {"send": 2, "recv": None}, "video": None}
    detailed = network_quality_entry("PA1", level, stats, 3)["stats"]
    assert detailed["audio"]["sendStats"]["fractionLost"]["fractionLost"] == 0.1 and detailed["audio"]["recvStats"] is None
