"""Turning counters and logs from one measured point into figures."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

MASK = 0xFFFFFFFF
PATTERN = 4  # consecutive timestamp differences that identify a frame
STEP = 3000  # 90 kHz / 30 fps
QUANTUM = 10  # media.JITTER_QUANTUM
SLACK = 3  # ticks a server may round a timestamp by


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _signatures(log: list[tuple[int, float]]) -> list[tuple[tuple[int, ...], int]]:
    """(quantized differences of the next PATTERN timestamps, timestamp) for each entry
    followed by PATTERN consecutive frames."""
    out = []
    diffs = []
    for (a, _), (b, _) in zip(log, log[1:]):
        d = ((b - a) & MASK) - STEP
        diffs.append(round(d / QUANTUM) if abs(d) <= 10 * QUANTUM else None)
    for i in range(len(diffs) - PATTERN + 1):
        key = tuple(diffs[i : i + PATTERN])
        if None not in key:
            out.append((key, log[i][0]))
    return out


def match_latency(probes: list[list[tuple[int, float]]], publishers: list[list[tuple[int, float]]]) -> tuple[list[float], int, int]:
    """One-way latency samples (seconds) of video frames seen by probe subscribers.

    ``publishers``: per publisher, (RTP timestamp, send time) of the last packet of each
    video frame it sent. ``probes``: per probe stream, (RTP timestamp, arrival time) of the
    last packet of each frame received. Both times are CLOCK_MONOTONIC, which every process
    on the machine shares.

    A server adds a constant offset to the timestamps of each subscriber stream (and
    renumbers sequence numbers), so a probe stream is matched to its publisher and offset by
    the pattern of the per-frame timestamp jitter publishers add (``media.jitter``): four
    consecutive timestamp differences, quantized, identify a frame. Every frame of the probe
    stream votes for (publisher, offset); offsets within a few ticks of each other count
    together (a decode/re-encode path may round timestamps); the majority wins, then each
    frame is looked up at that offset. Returns (samples, streams matched, streams seen).
    """
    index: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    sent: list[dict[int, float]] = []
    for pi, log in enumerate(publishers):
        ordered = sorted(log, key=lambda e: e[1])
        sent.append({ts: t for ts, t in ordered})
        for key, ts in _signatures(ordered):
            index.setdefault(key, []).append((pi, ts))
    samples: list[float] = []
    matched = 0
    seen = 0
    for arrivals in probes:
        if len(arrivals) <= PATTERN:
            continue
        seen += 1
        votes: Counter[tuple[int, int]] = Counter()
        for key, ts in _signatures(arrivals):
            for pi, pts in index.get(key, ()):
                votes[(pi, (ts - pts) & MASK)] += 1
        if not votes:
            continue

        def score(item: tuple[int, int]) -> int:
            pi, c = item
            return sum(votes.get((pi, (c + d) & MASK), 0) for d in range(-SLACK, SLACK + 1))

        best = max(votes, key=score)
        if score(best) < max(3, (len(arrivals) - PATTERN) // 4):
            continue  # no clear match: leave this stream out rather than guess
        matched += 1
        pi, offset = best
        table = sent[pi]
        for ts, t in arrivals:
            for d in (0, -1, 1, -2, 2, -3, 3):
                t_sent = table.get((ts - offset - d) & MASK)
                if t_sent is not None:
                    samples.append(t - t_sent)
                    break
    return samples, matched, seen


def _merge(snapshots: list[dict[str, Any]], key: str) -> dict[Any, Any]:
    merged: dict[Any, Any] = {}
    for snap in snapshots:
        merged.update(snap[key])
    return merged


def figures(
    layout: Any,
    snap0: list[dict[str, Any]],
    snap1: list[dict[str, Any]],
    collected: list[dict[str, Any]],
    window: float,
    server_cpu: float,
    peers_cpu: float,
    rss_start: int,
    rss_end: int,
) -> dict[str, Any]:
    s0, s1 = _merge(snap0, "streams"), _merge(snap1, "streams")
    received = expected = nbytes = video_frames = 0
    by_kind: dict[str, int] = Counter()
    for key, (kind, packets, size, highest, frames) in s1.items():
        before = s0.get(key)
        if before is None:
            dp, db, de, df = packets, size, highest + 1, frames
        else:
            dp, db, de, df = packets - before[1], size - before[2], highest - before[3], frames - before[4]
        received += dp
        nbytes += db
        by_kind[kind] += dp
        if kind in ("audio", "video"):
            expected += de
        if kind == "video":
            video_frames += df
    p0, p1 = _merge(snap0, "sources"), _merge(snap1, "sources")
    pub_frames = [p1[k][2] - p0.get(k, (0, 0, 0, 0))[2] for k in p1 if k[1] == "video"]
    sent_packets = sum(p1[k][0] - p0.get(k, (0, 0, 0, 0))[0] for k in p1)
    frames_per_publisher = sum(pub_frames) / len(pub_frames) if pub_frames else 0.0
    expected_frames = layout.video_subscriptions * frames_per_publisher
    packet_loss = max(0.0, 1 - received / expected) if expected else (1.0 if layout.video_subscriptions else 0.0)
    # one frame per stream of slack: the window's two ends are read in different processes
    frame_shortfall = max(0.0, 1 - (video_frames + layout.video_subscriptions) / expected_frames) if expected_frames else 1.0
    loss = max(packet_loss, frame_shortfall)

    participants = [p for c in collected for p in c["participants"]]
    by_index = {p["index"]: p for p in participants}
    errors = [p for p in participants if p["error"]]
    no_video = [p for p in participants if p["subscribe"] and not p["error"] and not p["has_video"]]
    joins = [p["join"] for p in participants if p["join"] is not None and not p["error"]]
    first_frames = []
    for p in participants:
        if not p["subscribe"] or p["first_frame_abs"] is None:
            continue
        # from when this participant started to subscribe, or when the first other
        # publisher of its room was up, whichever is later
        ups = [
            q["publish_connected"]
            for q in by_index.values()
            if q["room"] == p["room"] and q["index"] != p["index"] and q["publish_connected"] is not None
        ]
        ref = max(p["subscribe_start"], min(ups)) if ups else p["subscribe_start"]
        first_frames.append(p["first_frame_abs"] - ref)
    probes = [arr for p in participants for arr in p["probes"]]
    sent_logs = [p["sent"]["log"] for p in participants if p["sent"]]
    latency, matched, seen = match_latency(probes, sent_logs)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    out_pps = received / window
    return {
        "window_s": round(window, 3),
        "participants": layout.participants,
        "video_subscriptions": layout.video_subscriptions,
        "out_packets": received,
        "out_pps": round(out_pps, 1),
        "out_mbps": round(nbytes * 8 / window / 1e6, 2),
        "in_pps": round(sent_packets / window, 1),
        "audio_pps": round(by_kind.get("audio", 0) / window, 1),
        "video_pps": round(by_kind.get("video", 0) / window, 1),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_pct": round(100 * server_cpu / window, 1),
        "cpu_us_per_packet": round(server_cpu * 1e6 / received, 2) if received else None,
        "peers_cpu_pct": round(100 * peers_cpu / window, 1),
        "peers_us_per_packet": round(peers_cpu * 1e6 / (received + sent_packets), 2) if received + sent_packets else None,
        "packet_loss_pct": round(100 * packet_loss, 3),
        "frame_shortfall_pct": round(100 * frame_shortfall, 3),
        "loss_pct": round(100 * loss, 3),
        "latency_ms": {
            "p50": ms(percentile(latency, 50)),
            "p95": ms(percentile(latency, 95)),
            "p99": ms(percentile(latency, 99)),
            "samples": len(latency),
            "streams_matched": matched,
            "streams": seen,
        },
        "join_ms": {"p50": ms(percentile(joins, 50)), "p95": ms(percentile(joins, 95)), "samples": len(joins)},
        "first_frame_ms": {"p50": ms(percentile(first_frames, 50)), "p95": ms(percentile(first_frames, 95)), "samples": len(first_frames)},
        "rss_mb": round(rss_end / 1e6, 1),
        "rss_per_participant_mb": round((rss_end - rss_start) / 1e6 / max(1, layout.participants), 3),
        "failures": len(errors) + len(no_video),
        "failure_examples": [p["error"] for p in errors[:3]] + [f"{p['identity']}: no video" for p in no_video[:3]],
    }
