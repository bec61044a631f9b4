"""Scenarios and the measurement of one point (one target, one scenario, one load).

Per point: start the target server (fresh, pinned to its cores: one, or the first N for
``sfu serve --workers N``), start the load-peer processes (pinned to the other cores, or to
the last core when the server was given them all), join everyone (publishers first), wait
until every subscriber has video, warm up, then measure a steady window: counters at
subscribers and publishers and the CPU time of the server's whole process tree are read at
its start and end. Afterwards the probe and publisher logs are collected for latency, and
everything is torn down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics
from .peers import Spec, WorkerPool
from .targets import SERVERS, cpu_seconds, process_tree, tree_cpu_seconds, tree_cpu_wait_seconds, tree_rss_bytes

Say = Callable[[str], None]
STARVED_PCT = 10.0  # server waited this much of the window for a CPU: the machine, not the server
CPUS = sorted(os.sched_getaffinity(0))  # before the harness narrows its own affinity


@dataclass
class Layout:
    specs: list[Spec]
    rooms: list[str]
    participants: int
    video_subscriptions: int
    label: str
    storm_rate: float | None = None
    placement: str = "fanout"  # "fanout": publishers on worker 0; "mesh": spread


@dataclass
class Scenario:
    name: str
    points: list[int]
    unit: str
    describe: str
    layout: Callable[[int, "Options"], Layout]


@dataclass
class Options:
    duration: float = 15.0
    warmup: float = 5.0
    peers: int = 4  # load-peer processes
    server_workers: list[int] = field(default_factory=lambda: [1])  # sfu serve --workers, one run each
    room_size: int = 4
    split_rooms: bool = False  # with media workers: spread each room over all of them (sfu serve --room-capacity)
    probes: int = 4
    points: list[int] | None = None
    stop_loss_pct: float = 1.0
    storm_rate: float = 10.0
    out: Path = Path("benchmarks/out")
    clip: Path | None = None
    profile: bool = False
    log_level: str = "WARNING"
    peer_batch_ms: float = 2.0


def _fanout(n: int, o: Options) -> Layout:
    specs = [Spec(0, "pub-0", "fanout", publish=True, subscribe=False, salt=1)]
    for i in range(1, n + 1):
        specs.append(Spec(i, f"sub-{i}", "fanout", publish=False, subscribe=True, probe=i <= o.probes))
    return Layout(specs, ["fanout"], n + 1, n, f"1->{n}")


def _joinstorm(n: int, o: Options) -> Layout:
    layout = _fanout(n, o)
    layout.storm_rate = o.storm_rate
    layout.label = f"{n} @ {o.storm_rate:g}/s"
    return layout


def _meeting(n: int, o: Options) -> Layout:
    specs = [Spec(i, f"p-{i}", "meeting", publish=True, subscribe=True, probe=i < min(o.probes, n), salt=i + 1) for i in range(n)]
    return Layout(specs, ["meeting"], n, n * (n - 1), f"{n} x {n}", placement="mesh")


def _rooms(r: int, o: Options) -> Layout:
    size = o.room_size
    specs = []
    for room in range(r):
        for j in range(size):
            i = room * size + j
            specs.append(Spec(i, f"r{room}-p{j}", f"room-{room}", publish=True, subscribe=True, probe=j == 0 and room < o.probes, salt=i + 1))
    return Layout(specs, [f"room-{i}" for i in range(r)], size * r, size * (size - 1) * r, f"{r} rooms x {size}", placement="mesh")


SCENARIOS: dict[str, Scenario] = {
    "fanout": Scenario("fanout", [1, 10, 50, 100, 150, 200, 300, 400, 600, 800, 1000], "subscribers",
                       "one publisher (Opus 20 ms + VP8 ~1.5 Mbit/s) to N subscribers", _fanout),
    "meeting": Scenario("meeting", [2, 4, 8, 12, 16, 20, 24, 32], "participants",
                        "N participants, all publishing audio+video and subscribing to all", _meeting),
    "rooms": Scenario("rooms", [1, 5, 10, 15, 20, 25, 30, 40, 50], "rooms",
                      "R rooms of 4 participants (each publishes audio+video and subscribes to the others)", _rooms),
    "joinstorm": Scenario("joinstorm", [100], "subscribers",
                          "one publisher; N subscribers join at 10 per second", _joinstorm),
}


def core_plan(server_cores: int = 1) -> tuple[list[int] | None, list[int] | None]:
    """(server cores, peer cores). The server gets the first ``server_cores`` cores and the
    peers the others; when the server asks for every core, the peers keep the last one and
    share it with the server (on a 2-core machine, ``--workers 2`` means a media worker and
    the load peers compete for core 1; RESULTS.md explains how to read that)."""
    cpus = CPUS
    if len(cpus) < 2:
        return None, None
    server = cpus[: max(1, server_cores)]
    peers = [c for c in cpus if c not in server] or cpus[-1:]
    return server, peers


def target_name(target: str, server_workers: int, split: bool = False) -> str:
    """How results name a target: ``sfu`` is today's single process, ``sfu-w2`` is ``sfu
    serve --workers 2``, ``sfu-w2-split`` the same with each room spread over both workers
    (its tracks piped between them)."""
    if server_workers == 1:
        return target
    return f"{target}-w{server_workers}" + ("-split" if split else "")


def _assign(layout: Layout, workers: int) -> list[list[Spec]]:
    """fanout: publishers on worker 0, probes on worker 1, the rest on 2..; mesh: probes on
    worker 1, the rest spread over the others. Publishers and probes thus share their loop
    with few others, so send and arrival times are taken promptly."""
    buckets: list[list[Spec]] = [[] for _ in range(workers)]
    if workers < 3:
        for i, spec in enumerate(layout.specs):
            buckets[i % workers].append(spec)
        return buckets
    others = [0] + list(range(2, workers)) if layout.placement == "mesh" else list(range(2, workers))
    k = 0
    for spec in layout.specs:
        if spec.probe:
            buckets[1].append(spec)
        elif spec.publish and layout.placement == "fanout":
            buckets[0].append(spec)
        else:
            buckets[others[k % len(others)]].append(spec)
            k += 1
    return buckets


def _phase(pool: WorkerPool, args: list[dict[str, Any]], label: str, say: Say, timeout: float) -> None:
    ids = [w.send("join", a) for w, a in zip(pool.workers, args)]
    deadline = time.monotonic() + timeout
    last = 0.0
    while True:
        for w in pool.workers:
            w.poll()
        if all(rid in w.replies for w, rid in zip(pool.workers, ids)):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label} did not finish in {timeout:.0f}s")
        if time.monotonic() - last > 3.0:
            last = time.monotonic()
            status = pool.call_all("status", timeout=30)
            states: dict[str, int] = {}
            for s in status:
                for k, v in s["pc_states"].items():
                    states[k] = states.get(k, 0) + v
            say(f"{label}: {sum(s['connected'] for s in status)}/{sum(s['participants'] for s in status)} connected, "
                f"{sum(s['failed'] for s in status)} failed, {sum(s['sent'] for s in status)} packets sent; peer connections {states}")
        time.sleep(0.1)
    for w, rid in zip(pool.workers, ids):
        w.reply(rid, 1)


def _sleep(seconds: float, label: str, say: Say, pool: WorkerPool) -> None:
    end = time.monotonic() + seconds
    last_packets = None
    last_t = time.monotonic()
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 5.0))
        status = pool.call_all("status", timeout=30)
        packets = sum(s["packets"] for s in status)
        now = time.monotonic()
        rate = "" if last_packets is None else f", {(packets - last_packets) / (now - last_t):,.0f} pkt/s in"
        last_packets, last_t = packets, now
        say(f"{label}: {max(0.0, end - now):.0f}s left{rate}")


def run_point(target: str, scenario: Scenario, load: int, o: Options, say: Say, server_workers: int = 1) -> dict[str, Any]:
    layout = scenario.layout(load, o)
    split = o.split_rooms and server_workers > 1 and target == "sfu"
    name = target_name(target, server_workers, split)
    tag = f"{name} {scenario.name} {layout.label}"
    workdir = (o.out / "runs" / f"{name}-{scenario.name}-{load}-{int(time.time())}").resolve()
    server_cores, peer_cpus = core_plan(server_workers)
    if peer_cpus:
        os.sched_setaffinity(0, peer_cpus)  # the harness itself stays with the peers
    per_room: dict[str, int] = {}
    for spec in layout.specs:
        per_room[spec.room] = per_room.get(spec.room, 0) + 1
    # split: each worker takes its share of a room, the rest goes to the others through pipes
    capacity = -(-max(per_room.values()) // server_workers) if split else None
    server = SERVERS[target](workdir, server_cores, server_workers, capacity)
    server.max_participants = max(per_room.values())
    pool: WorkerPool | None = None
    t_begin = time.monotonic()
    try:
        say(f"{tag}: starting {target}" + (f" with {server_workers} media workers" if server_workers != 1 else "")
            + (f", at most {capacity} of a room's participants on each" if capacity else "")
            + (f" on cores {server_cores}, load peers on {peer_cpus}" if server_cores is not None else ""))
        pool = WorkerPool(o.peers, peer_cpus, o.log_level)  # peers import while the server starts
        t_server = time.monotonic()
        server.start(layout.rooms)
        rss_start = tree_rss_bytes(server.pid)
        say(f"{tag}: {target} up in {time.monotonic() - t_server:.1f}s, {len(process_tree(server.pid))} processes, RSS {rss_start / 1e6:.0f} MB")
        inits = []
        for i in range(len(pool.workers)):
            timed = i == 1 or (i == 0 and layout.placement == "fanout") or o.peers < 3  # probes, fanout publishers
            inits.append({"clip": str(o.clip), "target": server.client_info(), "batch_ms": 0 if timed else o.peer_batch_ms})
        pool.call_all("init", inits, timeout=120)
        buckets = _assign(layout, o.peers)
        n = len(layout.specs)
        _phase(pool, [{"phase": "publish", "specs": b} for b in buckets], f"{tag}: publishers joining", say, 60 + 3 * n)
        start_at: dict[int, float] = {}
        if layout.storm_rate:
            t0 = time.monotonic() + 1.0
            subs = [s for s in layout.specs if s.subscribe and not s.publish]
            start_at = {s.index: t0 + i / layout.storm_rate for i, s in enumerate(subs)}
        _phase(pool, [{"phase": "subscribe", "start_at": start_at} for _ in buckets], f"{tag}: subscribers joining", say, 60 + 3 * n)
        # every subscriber should see video before the clock starts
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = pool.call_all("status", timeout=30)
            live = sum(s["subscribers"] - s["failed"] for s in status)
            if sum(s["with_video"] for s in status) >= live:
                break
            time.sleep(0.5)
        _sleep(o.warmup, f"{tag}: warming up", say, pool)
        profiler = None
        snap0, cpu0, wait0, peers0_each, t0 = _accounts(pool, server.pid)
        if o.profile:
            profiler = _start_profiler(server.pid, o.duration, workdir)
        peer_profiler = None
        if os.environ.get("BENCH_PROFILE_PEERS") and len(pool.workers) > 2:
            peer_profiler = _start_profiler(pool.workers[-1].process.pid, o.duration, workdir, "peer-profile")
        _sleep(o.duration, f"{tag}: measuring", say, pool)
        snap1, cpu1, wait1, peers1_each, t1 = _accounts(pool, server.pid)
        rss_end = tree_rss_bytes(server.pid)
        processes = len(process_tree(server.pid))
        window = (snap1[0]["t"] - snap0[0]["t"]) if snap0 and snap1 else t1 - t0
        collected = pool.call_all("collect", {"t0": t0, "t1": t1}, timeout=60)
        (workdir / "collected.json").write_text(json.dumps(collected))
        result = metrics.figures(layout, snap0, snap1, collected, window, cpu1 - cpu0, sum(peers1_each) - sum(peers0_each), rss_start, rss_end)
        result["server_cpu_wait_pct"] = round(100 * (wait1 - wait0) / window, 1)
        result["server_processes"] = processes
        result["peers_cpu_pct_by_worker"] = [round(100 * (b - a) / window, 1) for a, b in zip(peers0_each, peers1_each)]
        if profiler is not None:
            result["profile"] = _finish_profiler(profiler, workdir)
        if peer_profiler is not None:
            result["peer_profile"] = _finish_profiler(peer_profiler, workdir, "peer-profile")
    except Exception as exc:
        say(f"{tag}: FAILED: {exc}")
        result = {"error": f"{type(exc).__name__}: {exc}", "failures": len(layout.specs)}
    finally:
        if pool is not None:
            pool.close()
        server.stop()
    result.update(target=name, scenario=scenario.name, load=load, label=layout.label, seconds=round(time.monotonic() - t_begin, 1),
                  server_workers=server_workers, room_capacity=capacity, server_cores=server_cores, peer_cpus=peer_cpus)
    result["held"] = bool("error" not in result and result["loss_pct"] < o.stop_loss_pct and result["failures"] == 0)
    return result


def run_target(target: str, scenario: Scenario, o: Options, say: Say, server_workers: int = 1) -> list[dict[str, Any]]:
    """Every point of ``scenario`` in turn, until loss passes ``stop_loss_pct``."""
    results = []
    for load in o.points or scenario.points:
        result = run_point(target, scenario, load, o, say, server_workers)
        # (not the relay: its encoder threads wait for each other on its one core)
        if not result["held"] and target != "relay" and result.get("server_cpu_wait_pct", 0) > STARVED_PCT * server_workers:
            # other work on the machine kept the server off its core: measure the point again
            say(f"{summary_line(result)}\n  -> the server waited {result['server_cpu_wait_pct']}% of the window for its core; "
                "measuring this point once more")
            first = result
            result = run_point(target, scenario, load, o, say, server_workers)
            result["retried_after"] = {k: first.get(k) for k in ("out_pps", "cpu_us_per_packet", "loss_pct", "server_cpu_wait_pct")}
        results.append(result)
        say(summary_line(result))
        if not result["held"]:
            break
    return results


def summary_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['target']} {r['scenario']} {r['label']}: error {r['error']}"
    lat = r["latency_ms"]
    return (
        f"{r['target']} {r['scenario']} {r['label']}: {r['out_pps']:,.0f} pkt/s out, {r['cpu_us_per_packet']} us/pkt "
        f"(server {r['server_cpu_pct']}% of a core over {r.get('server_processes', 1)} processes, waited {r.get('server_cpu_wait_pct', '?')}%; "
        f"peers {r['peers_cpu_pct']}%), "
        f"loss {r['loss_pct']}%, "
        f"latency p50/p95 {lat['p50']}/{lat['p95']} ms, failures {r['failures']}"
    )


# --- profiling ---------------------------------------------------------------------------


PYSPY_MODE = os.environ.get("BENCH_PYSPY_MODE", "--native").split()


def _start_profiler(pid: int, duration: float, workdir: Path, name: str = "profile") -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        return None
    raw = workdir / f"{name}.raw.txt"
    argv = [str(exe), "record", "--pid", str(pid), "--duration", str(max(1, int(duration) - 1)), "--rate", "100",
            *PYSPY_MODE, "--format", "raw", "--output", str(raw)]
    with open(workdir / f"{name}.log", "wb") as log:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)


def _finish_profiler(proc: subprocess.Popen[bytes], workdir: Path, name: str = "profile") -> dict[str, Any]:
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    raw = workdir / f"{name}.raw.txt"
    if not raw.exists():
        return {"error": (workdir / f"{name}.log").read_text()[-500:]}
    return summarize_profile(raw.read_text())


def _frame_name(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'to/file.py:func'; unresolved native frames -> 'lib:?'."""
    name, _, where = frame.rpartition(" (")
    if not name:
        name, where = frame, ""
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(path.split("/")[-2:]) if "/" in path else path
    if name.startswith("0x"):
        name = "?"
    return f"{short}:{name}" if short else name


CATEGORIES = [
    # (category, substrings of the leaf frame), first match wins
    ("kernel: UDP send (sendmsg/sendto)", ("sendmsg", "sendto", "sendmmsg")),
    ("kernel: UDP receive (recvmsg)", ("recvmsg", "recvfrom", "recvmmsg")),
    ("event loop wait (epoll)", ("epoll",)),
    ("SRTP encrypt/decrypt (libsrtp, OpenSSL)", ("srtp", "aes", "gcm", "_binding", "libcrypto", "sha1", "hmac")),
    ("forwarding code (sfu/media)", ("media/",)),
    ("signaling and room model", ("signaling/", "sfu/", "rest/", "aiohttp/", "web_")),
    ("aiortc / aioice (RTCP, STUN, DTLS)", ("aiortc/", "aioice/", "OpenSSL/", "libssl")),
    ("uvloop event loop internals", ("loop.c", "udp.c", "core.c", "linux.c", "uvloop", "handles")),
    ("CPython interpreter (calls, objects, memory)", ("libpython", "object.h", "ceval", ".h:", "obmalloc")),
    ("libc (other)", ("libc.so",)),
]


def summarize_profile(text: str, top: int = 15) -> dict[str, Any]:
    """Shares of busy samples from py-spy's raw (collapsed) output: by category of the
    innermost frame, by innermost function (self) and by function of our own code or the
    libraries it calls (inclusive)."""
    from collections import Counter

    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if "PyThread_acquire_lock" in stack:
            continue  # an idle executor thread waiting for work, not CPU time
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        total += n
        leaf = frames[-1]
        own[leaf] += n
        categories[next((c for c, keys in CATEGORIES if any(k in leaf for k in keys)), "other")] += n
        for name in set(frames):
            if name.startswith(("media/", "sfu/", "signaling/", "aiortc/", "aioice/", "pylibsrtp/")):
                inclusive[name] += n
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(k)]

    return {"samples": total, "categories": share(categories, len(CATEGORIES) + 1), "self": share(own, top), "inclusive": share(inclusive, top)}


def _accounts(pool: Any, server_pid: int) -> tuple[Any, float, float, list[float], float]:
    """One side of a measured window: peers' counters, the server's CPU and wait (its whole
    process tree: front and media workers), peers' CPU, time."""
    snapshot = pool.call_all("snapshot", timeout=30)
    return (
        snapshot,
        tree_cpu_seconds(server_pid),
        tree_cpu_wait_seconds(server_pid),
        [cpu_seconds(pid) for pid in pool.pids()],
        time.monotonic(),
    )
