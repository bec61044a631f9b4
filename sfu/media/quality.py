"""Network quality per participant transport: Twilio's level 0 to 5, from RTCP and bitrates.

Each second or so the media plane takes one ``Sample`` per media kind and direction of a
transport ("send": what the participant publishes and the SFU receives; "recv": what the
SFU forwards to it) and scores it here, as LiveKit's ``connectionquality`` does:
- packet loss: the SFU's own count of a publisher's stream (expected against received), or
  the fraction lost the subscriber reports in its receiver reports (RFC 3550);
- latency: the subscriber's interarrival jitter and the round-trip time from its receiver
  reports' LSR/DLSR against the sender reports the SFU sent;
- bandwidth: the bitrate sent or received against what the tracks need (a floor per kind),
  for what the SFU sends capped by the subscriber's bandwidth estimate (REMB).
Each measure gives a level; a direction's level is its worst measure's, the transport's is
the worst direction's. Twilio: 5 excellent, 1 very poor, 0 the network is broken (nothing
arrives). A level falls at once and rises one step per report, so it does not flap.

``stats`` take Twilio's detailed NetworkQualityStats shape; the signaling layer trims them to
the verbosity each client asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["send", "recv"]

# (upper bound, level) steps, best first; a value at or beyond the last bound scores LOWEST.
LOSS_STEPS = ((0.01, 5), (0.03, 4), (0.06, 3), (0.12, 2))  # fraction lost
RTT_STEPS = ((0.15, 5), (0.25, 4), (0.40, 3), (0.60, 2))  # seconds
JITTER_STEPS = ((0.02, 5), (0.04, 4), (0.08, 3), (0.15, 2))  # seconds
BANDWIDTH_STEPS = ((0.9, 5), (0.7, 4), (0.5, 3), (0.3, 2))  # share of the bitrate needed (at least)
LOWEST = 1  # a measure past every step: very poor, but media still flows
BROKEN_LOSS = 0.95  # nearly nothing arrives: the network is broken (level 0)
# Bits/s below which a track that sends at all is starved: Opus' floor, and a video too thin
# to move (an encoder sends less for still or simple content, so this is a floor, not a goal).
NEEDED_BITRATE = {"audio": 8_000, "video": 30_000}


def _stepped(value: float, steps: Sequence[tuple[float, int]], higher_is_better: bool = False) -> int:
    for bound, level in steps:
        if (value >= bound) if higher_is_better else (value < bound):
            return level
    return LOWEST


def loss_level(fraction_lost: float) -> int:
    if fraction_lost >= BROKEN_LOSS:
        return 0
    return _stepped(fraction_lost, LOSS_STEPS)


def latency_level(rtt: float | None, jitter: float | None) -> int:
    levels = [5]
    if rtt is not None:
        levels.append(_stepped(rtt, RTT_STEPS))
    if jitter is not None:
        levels.append(_stepped(jitter, JITTER_STEPS))
    return min(levels)


def bandwidth_level(actual: float, needed: float, available: float | None = None) -> int:
    """``actual`` bits/s against ``needed``; ``available`` (an estimate) caps what counts
    as actual: a subscriber whose estimate is under what it needs is starved even if the SFU
    still sends more (it will lose it)."""
    if needed <= 0:
        return 5
    usable = actual if available is None else min(actual, available)
    return _stepped(usable / needed, BANDWIDTH_STEPS, higher_is_better=True)


@dataclass
class Sample:
    """One media kind in one direction of a transport, over one window."""

    fraction_lost: float | None = None  # 0.0 to 1.0; None when nothing told us
    rtt: float | None = None  # seconds
    jitter: float | None = None  # seconds
    bitrate: float = 0.0  # bits/s actually sent or received
    needed: float = 0.0  # bits/s the tracks need (NEEDED_BITRATE per track that sends)
    available: float | None = None  # bits/s the receiver estimates it can take (REMB)


def score(sample: Sample) -> tuple[int, dict[str, Any]]:
    """A direction's level and Twilio's ``sendStats``/``recvStats`` for it."""
    loss = loss_level(sample.fraction_lost) if sample.fraction_lost is not None else 5
    latency = latency_level(sample.rtt, sample.jitter)
    bandwidth = bandwidth_level(sample.bitrate, sample.needed, sample.available)
    stats = {
        "bandwidth": {"actual": round(sample.bitrate), "available": _rounded(sample.available), "level": bandwidth},
        "fractionLost": {"fractionLost": _rounded(sample.fraction_lost, 4), "level": loss},
        "latency": {"jitter": _rounded(sample.jitter, 4), "rtt": _rounded(sample.rtt, 4), "level": latency},
    }
    return min(loss, latency, bandwidth), stats


def _rounded(value: float | None, digits: int = 0) -> float | None:
    return None if value is None else round(value, digits)


def network_quality(samples: dict[tuple[str, Direction], Sample]) -> tuple[int, dict[str, Any]] | None:
    """The transport's level and Twilio's detailed stats from its samples by (kind,
    direction); None when there is nothing to score yet."""
    if not samples:
        return None
    stats: dict[str, Any] = {"level": 0, "audio": None, "video": None}
    levels = []
    for (kind, direction), sample in samples.items():
        level, detail = score(sample)
        levels.append(level)
        media = stats[kind] or {"send": None, "recv": None, "sendStats": None, "recvStats": None}
        media[direction] = level
        media[f"{direction}Stats"] = detail
        stats[kind] = media
    stats["level"] = min(levels)
    return stats["level"], stats


class LevelSmoother:
    """The reported level: falls at once, rises one step per window (no flapping)."""

    __slots__ = ("level",)

    def __init__(self) -> None:
        self.level: int | None = None

    def update(self, measured: int) -> int:
        if self.level is None or measured <= self.level:
            self.level = measured
        else:
            self.level += 1
        return self.level


# --- gathering samples from the media plane's counters --------------------------------------


class Window:
    """Counter differences over successive windows for one source or sink (running totals in,
    per-window differences out)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[float, ...] | None = None

    def delta(self, *totals: float) -> tuple[float, ...] | None:
        """The change of each total since the previous call (None on the first)."""
        last, self._last = self._last, totals
        if last is None:
            return None
        return tuple(now - before for now, before in zip(totals, last))


def merge(samples: Iterable[Sample]) -> Sample:
    """Several tracks of one kind and direction as one sample: loss and latency of the worst,
    bitrates and needs summed."""
    out = Sample()
    availables = []
    for s in samples:
        if s.fraction_lost is not None:
            out.fraction_lost = max(out.fraction_lost or 0.0, s.fraction_lost)
        if s.rtt is not None:
            out.rtt = max(out.rtt or 0.0, s.rtt)
        if s.jitter is not None:
            out.jitter = max(out.jitter or 0.0, s.jitter)
        out.bitrate += s.bitrate
        out.needed += s.needed
        if s.available is not None:
            availables.append(s.available)
    if availables:
        out.available = max(availables)  # (a REMB covers every stream of the transport)
    return out


class QualityMonitor:
    """One transport's network quality, measured window by window from its producers' and
    consumers' running counters (``measure``)."""

    def __init__(self) -> None:
        self._windows: dict[object, Window] = {}
        self._smoother = LevelSmoother()
        self.level: int | None = None
        self.stats: dict[str, Any] | None = None

    def measure(self, producers: Iterable[Any], consumers: Iterable[Any], elapsed: float) -> bool:
        """Take one window (``elapsed`` seconds long) of ``producers`` (sfu.media.producer)
        and ``consumers`` (sfu.media.consumer); True when the level changed."""
        if elapsed <= 0:
            return False
        seen: set[object] = set()
        grouped: dict[tuple[str, Direction], list[Sample]] = {}
        consumers = [c for c in consumers if c.kind in NEEDED_BITRATE]
        rtts = [c.stats.rtt for c in consumers if c.stats.rtt is not None]
        rtt = min(rtts) if rtts else None  # (the path is the same for every stream of the transport)
        for producer in producers:
            if producer.kind not in NEEDED_BITRATE:
                continue
            seen.add(producer)
            stats = producer.stats
            delta = self._window(producer).delta(stats.expected(), stats.packets, stats.octets)
            if delta is None or delta[1] <= 0:
                continue  # first window, or nothing sent (muted, not started)
            expected, packets, octets = delta
            lost = max(0.0, expected - packets) / expected if expected > 0 else 0.0
            sample = Sample(lost, rtt, None, octets * 8 / elapsed, NEEDED_BITRATE[producer.kind])
            grouped.setdefault((producer.kind, "send"), []).append(sample)
        for consumer in consumers:
            seen.add(consumer)
            stats = consumer.stats
            delta = self._window(consumer).delta(stats.packets, stats.octets)
            if delta is None or delta[0] <= 0:
                continue
            clock = 90000 if consumer.kind == "video" else 48000
            sample = Sample(
                stats.fraction_lost / 256 if stats.reports else None,
                stats.rtt,
                stats.jitter / clock if stats.reports else None,
                delta[1] * 8 / elapsed,
                NEEDED_BITRATE[consumer.kind],
                consumer.remb(),
            )
            grouped.setdefault((consumer.kind, "recv"), []).append(sample)
        for gone in [k for k in self._windows if k not in seen]:
            del self._windows[gone]
        scored = network_quality({key: merge(samples) for key, samples in grouped.items()})
        if scored is None:
            return False
        level = self._smoother.update(scored[0])
        stats_out = scored[1]
        stats_out["level"] = level
        changed = level != self.level
        self.level, self.stats = level, stats_out
        return changed

    def _window(self, endpoint: object) -> Window:
        window = self._windows.get(endpoint)
        if window is None:
            window = self._windows[endpoint] = Window()
        return window
