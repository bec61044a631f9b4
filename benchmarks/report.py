"""Writing results: JSON, a Markdown table, a PNG chart, and benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET_ORDER = ["sfu", "janus", "floor", "relay"]
BASELINES = ["janus", "floor", "relay"]  # what the sfu is compared with, in the report's order
COLORS = {"sfu": "#1f77b4", "janus": "#2ca02c", "floor": "#7f7f7f", "relay": "#d62728"}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_mb": mem, "kernel": platform.release(), "python": platform.python_version()}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _pair(d: dict[str, Any], a: str, b: str, digits: int = 1) -> str:
    return f"{_fmt(d.get(a), digits)} / {_fmt(d.get(b), digits)}"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| target | load | out pkt/s | out Mbit/s | server CPU % of 1 core (waited %) | server µs / out pkt | loss % | "
        "added latency p50 / p95 / p99 ms | join p50 / p95 ms | first frame p50 / p95 ms | server RSS MB (per participant) | "
        "peers CPU % (µs / pkt) | failures |\n"
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|---:|\n"
    )
    rows = []
    for r in results:
        if "error" in r:
            rows.append(f"| {r['target']} | {r['label']} | error: {r['error'][:80]} | | | | | | | | | | {r.get('failures', '')} |")
            continue
        lat = r["latency_ms"]
        held = ("" if r["held"] else " ✗") + (" ↻" if r.get("retried_after") else "")
        rows.append(
            f"| {r['target']} | {r['label']}{held} | {_fmt(r['out_pps'])} | {_fmt(r['out_mbps'])} | "
            f"{_fmt(r['server_cpu_pct'])} ({_fmt(r.get('server_cpu_wait_pct'))}) | "
            f"**{_fmt(r['cpu_us_per_packet'])}** | {_fmt(r['loss_pct'], 2)} | "
            f"{_fmt(lat['p50'], 2)} / {_fmt(lat['p95'], 2)} / {_fmt(lat['p99'], 2)} | {_pair(r['join_ms'], 'p50', 'p95', 0)} | "
            f"{_pair(r['first_frame_ms'], 'p50', 'p95', 0)} | {_fmt(r['rss_mb'])} ({_fmt(r['rss_per_participant_mb'], 2)}) | "
            f"{_fmt(r['peers_cpu_pct'])} ({_fmt(r['peers_us_per_packet'])}) | {r['failures']} |"
        )
    return head + "\n".join(rows) + "\n"


def best_held(results: list[dict[str, Any]], target: str) -> dict[str, Any] | None:
    held = [r for r in results if r["target"] == target and r.get("held")]
    return max(held, key=lambda r: r["out_pps"]) if held else None


def cpu_reference(results: list[dict[str, Any]], target: str) -> dict[str, Any] | None:
    """The held point with the most output: where CPU per packet is least diluted by fixed costs."""
    return best_held(results, target)


def _ratio(x: float) -> float:
    return round(x, 3) if x >= 0.1 else round(x, 5)


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sfu = best_held(results, "sfu")
    for other in BASELINES:
        ref = best_held(results, other)
        if sfu is None or ref is None:
            continue
        # CPU per packet compared at the same load: the largest load both held
        common = sorted({r["load"] for r in results if r["target"] == "sfu" and r.get("held")}
                        & {r["load"] for r in results if r["target"] == other and r.get("held")})
        same = None
        if common:
            load = common[-1]
            a = next(r for r in results if r["target"] == "sfu" and r["load"] == load)
            b = next(r for r in results if r["target"] == other and r["load"] == load)
            if a["cpu_us_per_packet"] and b["cpu_us_per_packet"]:
                same = {"load": a["label"], "sfu": a["cpu_us_per_packet"], other: b["cpu_us_per_packet"],
                        "ratio": _ratio(a["cpu_us_per_packet"] / b["cpu_us_per_packet"])}
        out[other] = {
            "cpu_per_packet_at_best": {"sfu": sfu["cpu_us_per_packet"], other: ref["cpu_us_per_packet"],
                                       "ratio": _ratio(sfu["cpu_us_per_packet"] / ref["cpu_us_per_packet"])},
            "cpu_per_packet_same_load": same,
            "highest_held": {"sfu": sfu["label"], other: ref["label"], "sfu_out_pps": sfu["out_pps"], f"{other}_out_pps": ref["out_pps"],
                             "ratio_out_pps": round(sfu["out_pps"] / ref["out_pps"], 2) if ref["out_pps"] else None},
        }
    return out


def chart(results: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Draw the chart; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=72)
    panels = [
        ("cpu_us_per_packet", "server CPU µs / output packet", True),
        ("out_pps", "output packets / s", True),
        ("loss_pct", "loss %", False),
    ]
    present = [t for t in TARGET_ORDER if any(r["target"] == t for r in results)]
    present += sorted({r["target"] for r in results} - set(present))  # sfu-w2 (sfu serve --workers 2) and the like
    for ax, (key, label, log) in zip(axes, panels):
        for target in present:
            pts = [(r["load"], r[key]) for r in results
                   if r["target"] == target and "error" not in r and r.get(key) is not None and (not log or r[key] > 0)]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3, label=target, color=COLORS.get(target))
        ax.set_xlabel(results[0]["scenario"] + " load" if results else "load")
        ax.set_title(label, fontsize=9)
        if log:
            ax.set_yscale("log")
        loads = [r["load"] for r in results]
        if loads and min(loads) > 0 and max(loads) / min(loads) >= 20:
            ax.set_xscale("log")
        if key == "loss_pct":
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    if axes[0].get_lines():
        axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_run(out_dir: Path, doc: dict[str, Any]) -> dict[str, Path]:
    """results.json, table.md and chart.png for one run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "table": out_dir / "table.md", "chart": out_dir / "chart.png"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str))
    paths["table"].write_text(table(doc["results"]))
    if doc["results"]:
        chart(doc["results"], paths["chart"], f"{doc['scenario']}: {doc['describe']}")
    return paths


def _git_commit() -> str:
    """HEAD, and whether the server's code differed from it (read-only git commands)."""
    try:
        head = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "sfu", "signaling", "sfuserver"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + (" with uncommitted changes in sfu/, signaling/ or sfuserver/" if dirty else "")
    except Exception:
        return "?"


AIMS = """Aims of issue 5 (reported per scenario above, not enforced by tests): under 10 µs of server CPU per
forwarded output packet on fanout (100k packets/s per core), under 25 µs on meeting; p95 added
latency under 5 ms below saturation; time to first frame under 300 ms; CPU per packet within 1.5x
of Janus and at least 100x better than relay. The aims of issue 9 are checked in their own table
at the top."""

METHOD = """## How the figures are taken

- **Processes and cores.** The server under test runs alone in its own process, pinned with
  `taskset` to the first core; the harness and its load-peer processes (4, each hosting
  many aiortc peer connections on a uvloop loop) are pinned to the other core. With media
  workers (`sfu-wN`: `sfu serve --workers N`) the server's front and its N workers get the
  first N cores and the load peers keep the last one, so on a 2-core machine `sfu-w2`'s
  second worker shares core 1 with the load peers. Everything runs in
  the private network namespace of `tests/netns.sh`: ICE uses its test interface, HTTP and
  signaling use 127.0.0.1, no packet leaves the machine.
- **Server settings.** Ours: `sfu serve` as shipped (uvloop), with `--max-participants` raised
  above Twilio's 50-participant group-room cap for the larger rooms. Janus 1.1.2
  (Debian): videoroom plugin and HTTP transport only, debug level 2, `event_loops = 1` (Janus's
  advice for large deployments is a few static event loops, one per core; its default, a thread
  per handle, spent more CPU switching between hundreds of threads than forwarding in a trial at
  fanout 1->200); rooms created with no bitrate cap and VP8/Opus. Relay: `benchmarks/baselines/relay.py`.
- **The floor** (`benchmarks/baselines/floor.py`) is what delivering the same output costs with no
  SFU logic: one process, one UDP socket, a `poll` loop that receives each publisher packet and sends
  it unchanged to every subscriber socket with one `udpio.send_many` per input packet (`sendmmsg` when
  udpio's C extension is built, as each scenario's header says; udpio's pure-Python fallback makes one
  `sendto` per copy). No ICE, DTLS, SRTP, RTCP, rewriting or signaling. Its
  publisher sends the same clip in plain RTP with 16 bytes in place of the SRTP tag, so the packets
  have the SRTP packets' sizes; its subscribers are plain UDP sockets on the same interface, counted
  and timed like the others, and a subscriber's registration makes the floor ask for a keyframe.
- **Same load for every target.** The same peers and the same media are used against all three
  servers; only signaling differs (our websocket protocol, Janus's HTTP API with the videoroom
  plugin, the relay baseline's trivial HTTP API). Janus and the relay give a participant that
  publishes and subscribes two peer connections (as Janus's videoroom does with browsers); ours
  uses one.
- **Publishers** send a pre-encoded clip (VP8 640x480 30 fps at about 1.5 Mbit/s, about 160
  packets/s, and Opus 20 ms frames, 50 packets/s), made once with PyAV at setup and looped with
  continuous, evenly spaced send times and continuous timestamps; nothing is encoded in the loop.
  Each packet costs a header `struct.pack`, SRTP protect and `sendto` (aiortc's encoder loop is
  bypassed). PLI/FIR are answered with a keyframe of the current picture (the clip also exists
  intra-only). Publishers send no RTCP sender reports.
- **Counting peers take packets in batches.** Workers that host only counting subscribers (not the
  publisher of a fanout, not the probes) block their loop for 2 ms once per iteration, so one wake-up
  finds many sockets ready: a load peer's CPU goes mostly to wake-ups, not to packets
  (`--peer-batch-ms`, 0 turns it off). No time is measured in those workers except join times and
  first frames (which can be late by up to those 2 ms).
- **Subscribers never decrypt or decode media.** Their RTP datagrams are taken off the UDP socket
  before aioice and SRTP; the clear-text RTP header gives SSRC, sequence number (gaps = loss),
  timestamp and marker bit (frames). Only until the first keyframe of a stream has arrived are its
  packets decrypted, to see where that keyframe is (time to first frame), and, like a browser
  that cannot decode yet, the subscriber sends a PLI every 0.3 s. Otherwise subscribers send no
  receiver reports and no NACKs, so the servers handle less RTCP than they would with browsers.
- **Server CPU per output packet** = the server's CPU time (utime + stime of all its threads,
  from `/proc/PID/stat`, i.e. the kernel's accounting, including the kernel work of its own
  `sendto`/`recvfrom` calls), summed over its whole process tree (the front and its media
  workers, plus any child reaped during the window), over the steady window, divided by the RTP
  packets the subscribers received in that window. **Peers CPU** is the same for the worker
  processes, per packet they sent or received: when it is near 100% the peers, not the server,
  were the limit.
- **Loss** = the larger of (a) packet loss from sequence-number gaps per received stream and (b)
  frame shortfall: video frames received vs. frames published times the video subscriptions the
  scenario calls for, less one frame per subscription for the window's edges (this catches
  streams that never arrived, and servers that fall behind without gaps, like the relay, whose
  re-encoders number their own packets). A point is *held*
  when loss is under 1% and every participant joined and got video; a scenario stops at the first
  point not held.
- **Added latency** is one-way, from the publisher's `sendto` of the last packet of a video frame
  to the probe subscriber's receipt of the last packet of that frame, both read from
  CLOCK_MONOTONIC (`time.monotonic()`), which all processes on the machine share. Servers rewrite
  RTP timestamps by a constant offset per subscriber; to know which published frame arrived,
  publishers add a small pseudo-random per-frame offset (0 to 80 ticks of 90 kHz in steps of 10,
  seeded per publisher) to their video timestamps while keeping send times evenly spaced. Four
  consecutive timestamp differences, in steps of 10 ticks, identify a frame and its publisher;
  the frames of a probe stream vote for (publisher, offset), offsets within 3 ticks counting
  together (aiortc's decode/re-encode path in the relay rounds timestamps by a tick); the
  majority wins and every frame is then looked up at that offset. Probes (4 per point) live in a
  worker of their own so their loop is idle when packets arrive.
- **Join time** = from the participant's first signaling request to its (first) peer connection
  being `connected`. **Time to first frame** = from when a subscriber started to subscribe (or
  when the first other publisher of its room was up, if later) to the arrival of the last packet
  of the first complete video keyframe.
- **Waited %**: the time the server's threads were runnable but not running (the kernel's
  `schedstat` for each of its threads), as a share of the window: other work on the server's
  core. Where it is large the server had less than a whole core, and throughput and latency at
  that point say more about the machine than about the server.
- **RSS per participant** = (server RSS at the end of the window − RSS right after start) /
  participants.
"""


def aims_check(doc: dict[str, Any]) -> list[str]:
    """The issue's aims against this run's figures (sfu only)."""
    results = [r for r in doc["results"] if r["target"] == "sfu" and "error" not in r]
    held = [r for r in results if r.get("held")]
    if not held:
        return ["No sfu point was held: no aim can be checked."]
    best = max(held, key=lambda r: r["out_pps"])
    rows = ["| aim | figure in this run | met? |", "|---|---|---|"]

    def row(aim: str, figure: str, ok: bool | None) -> None:
        rows.append(f"| {aim} | {figure} | {'yes' if ok else 'no' if ok is not None else '–'} |")

    limit = {"fanout": 10.0, "meeting": 25.0}.get(doc["scenario"])
    if limit is not None:
        row(f"server CPU under {limit:g} µs per output packet ({doc['scenario']})",
            f"{best['cpu_us_per_packet']} µs at {best['label']} ({_fmt(best['out_pps'])} pkt/s, "
            f"so about {_fmt(1e6 / best['cpu_us_per_packet'])} pkt/s per core)", best["cpu_us_per_packet"] < limit)
    below = [r for r in held if r["server_cpu_pct"] < 75 and r["latency_ms"]["p95"] is not None]
    if below:
        p95 = [r["latency_ms"]["p95"] for r in below]
        row("p95 added latency under 5 ms below saturation (held points with server CPU under 75%)",
            ", ".join(f"{r['latency_ms']['p95']} ms at {r['label']}" for r in below), max(p95) < 5)
    ff = [r["first_frame_ms"]["p95"] for r in held if r["first_frame_ms"]["p95"] is not None]
    if ff:
        row("time to first frame under 300 ms (p95, every held point)", f"{min(ff):.0f}–{max(ff):.0f} ms", max(ff) < 300)
    rat = doc.get("ratios", {})
    if "janus" in rat:
        r = rat["janus"]
        same = r.get("cpu_per_packet_same_load")
        value = same["ratio"] if same else r["cpu_per_packet_at_best"]["ratio"]
        where = f"at {same['load']}" if same else "each at its highest held load"
        row("CPU per packet within 1.5x of Janus", f"sfu/janus = {value} ({where})", value <= 1.5)
    if "relay" in rat:
        r = rat["relay"]
        best = r["cpu_per_packet_at_best"]
        factor = best["relay"] / best["sfu"]
        same = r.get("cpu_per_packet_same_load")
        text = f"relay/sfu = {factor:.1f}x each at its highest held load ({best['relay']} vs {best['sfu']} µs)"
        if same:
            text += f"; {same['relay'] / same['sfu']:.1f}x at the same load {same['load']}, where fixed costs dominate"
        row("CPU per packet at least 100x better than relay", text, factor >= 100)
    return rows


def _point(doc: dict[str, Any] | None, target: str, load: int) -> dict[str, Any] | None:
    """``target``'s measured point at ``load`` in ``doc`` (None if not run or failed)."""
    if doc is None:
        return None
    return next((r for r in doc["results"] if r["target"] == target and r["load"] == load and "error" not in r), None)


def cpu_by_load(results: list[dict[str, Any]]) -> list[str]:
    """CPU µs per output packet at every load the sfu ran, beside each baseline's at the same
    load, and the ratios sfu / baseline (✗: that point was not held)."""
    bases = [b for b in BASELINES if any(r["target"] == b and "error" not in r for r in results)]
    loads = sorted({r["load"] for r in results if r["target"] == "sfu" and "error" not in r})
    if not bases or not loads:
        return []
    doc = {"results": results}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None or r.get("cpu_us_per_packet") is None:
            return "–"
        return _fmt(float(r["cpu_us_per_packet"]), 2) + ("" if r.get("held") else " ✗")

    rows = ["| load | " + " | ".join(f"{t} µs / out pkt" for t in ["sfu", *bases]) + " | "
            + " | ".join(f"sfu / {b}" for b in bases) + " |",
            "|---|" + "---:|" * (2 * len(bases) + 1)]
    for load in loads:
        ours = _point(doc, "sfu", load)
        assert ours is not None
        others = [_point(doc, b, load) for b in bases]
        ratios_ = [f"**{_ratio(ours['cpu_us_per_packet'] / o['cpu_us_per_packet'])}**"
                   if o and o.get("cpu_us_per_packet") and ours.get("cpu_us_per_packet") else "–" for o in others]
        rows.append(f"| {ours['label']} | {cell(ours)} | " + " | ".join(cell(o) for o in others) + " | " + " | ".join(ratios_) + " |")
    return rows


def _server_workers(r: dict[str, Any]) -> int:
    return int(r.get("server_workers", 1))


def workers_table(results: list[dict[str, Any]]) -> list[str]:
    """Our server by number of media worker processes (``sfu``, ``sfu-w2``...): the highest
    load each held, what the whole process tree spent per output packet there, and what the
    load peers spent beside it. Empty unless the run has more than one worker count."""
    ours = [r for r in results if r["target"] == "sfu" or r["target"].startswith("sfu-w")]
    names = sorted({r["target"] for r in ours}, key=lambda t: (min(_server_workers(r) for r in ours if r["target"] == t), t))
    if len(names) < 2:
        return []
    rows = ["| server | media workers | server on cores, peers on | highest load held | participants | out pkt/s | "
            "server CPU % of 1 core, all processes (waited %) | server µs / out pkt | peers CPU % | first load not held |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for name in names:
        runs = [r for r in ours if r["target"] == name]
        best = best_held(results, name)
        failed = next((r for r in runs if not r.get("held")), None)
        why = "–"
        if failed is not None:
            why = (f"{failed['label']}: " + (failed["error"][:60] if "error" in failed else
                   f"loss {failed['loss_pct']}%, {failed['failures']} failures, server {failed['server_cpu_pct']}%, "
                   f"peers {failed['peers_cpu_pct']}%"))
        cores = f"{runs[0].get('server_cores')}, {runs[0].get('peer_cpus')}"
        if best is None:
            rows.append(f"| {name} | {_server_workers(runs[0])} | {cores} | none | | | | | | {why} |")
            continue
        rows.append(f"| {name} | {_server_workers(best)} | {cores} | {best['label']} | {best['participants']} | {_fmt(best['out_pps'])} | "
                    f"{_fmt(best['server_cpu_pct'])} ({_fmt(best.get('server_cpu_wait_pct'))}) | **{_fmt(best['cpu_us_per_packet'])}** | "
                    f"{_fmt(best['peers_cpu_pct'])} | {why} |")
    return rows


def _stopped(doc: dict[str, Any], target: str) -> str:
    """Where ``target``'s run ended, for a figure that is missing."""
    runs = [r for r in doc["results"] if r["target"] == target]
    if not runs:
        return f"{target} not in this run"
    last = runs[-1]
    if "error" in last:
        return f"{target} failed at {last['label']}"
    return f"{target} ran up to {last['label']}" + ("" if last.get("held") else " (not held)")


def _cpu_ratio_aim(doc: dict[str, Any] | None, scenario: str, load: int, base: str, limit: float) -> tuple[str, bool | None]:
    """(figure, met?) for "ours/base CPU per output packet at ``load``, ours held there, <= limit"."""
    if doc is None:
        return f"no {scenario} run stored", None
    ours, other = _point(doc, "sfu", load), _point(doc, base, load)
    if ours is None:
        runs = [r for r in doc["results"] if r["target"] == "sfu"]
        failed = bool(runs) and (not runs[-1].get("held")) and runs[-1]["load"] < load
        return _stopped(doc, "sfu"), (False if failed else None)
    if not ours.get("held"):
        return f"ours did not hold {ours['label']} (loss {ours.get('loss_pct')}%, {ours.get('failures')} failures)", False
    if other is None or not other.get("cpu_us_per_packet"):
        return f"ours {ours['cpu_us_per_packet']} µs at {ours['label']}; {_stopped(doc, base)}", None
    ratio = ours["cpu_us_per_packet"] / other["cpu_us_per_packet"]
    note = "" if other.get("held") else f" ({base} not held there)"
    return (f"{ours['cpu_us_per_packet']} / {other['cpu_us_per_packet']} µs = **{ratio:.2f}** at {ours['label']}{note}",
            ratio <= limit)


def issue9_aims(docs: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 9's aims against the stored runs: one row each, met / not met / not measured."""
    fanout, meeting = docs.get("fanout"), docs.get("meeting")
    rows = ["| aim | figure | |", "|---|---|---|"]

    def row(aim: str, figure: str, ok: bool | None) -> None:
        rows.append(f"| {aim} | {figure} | {'met' if ok else 'not met' if ok is not None else 'not measured'} |")

    for base, limit in (("janus", 0.8), ("floor", 1.6)):
        row(f"fanout: server CPU per output packet at 1->200, ours/{base} <= {limit:g}",
            *_cpu_ratio_aim(fanout, "fanout", 200, base, limit))
    if fanout is None:
        row("fanout: highest fan-out held on one core >= Janus's", "no fanout run stored", None)
    else:
        ours, theirs = best_held(fanout["results"], "sfu"), best_held(fanout["results"], "janus")
        if theirs is None:
            row("fanout: highest fan-out held on one core >= Janus's", _stopped(fanout, "janus"), None)
        else:
            figure = f"ours {ours['label'] if ours else 'none'} ({_stopped(fanout, 'sfu')}), Janus {theirs['label']} ({_stopped(fanout, 'janus')})"
            janus_last = [r for r in fanout["results"] if r["target"] == "janus"][-1]
            verdict: bool | None = ours is not None and ours["load"] >= theirs["load"]
            if verdict and janus_last.get("held") and ours is not None and ours["load"] <= janus_last["load"]:
                verdict = None  # Janus held every point it ran: its highest is not known
                figure += "; Janus held every point run, so its highest is not known"
            row("fanout: highest fan-out held on one core >= Janus's", figure, verdict)
    for name, doc in (("fanout", fanout), ("meeting", meeting)):
        aim = f"{name}: p95 added latency at every point held below 75% server CPU <= 5 ms and <= Janus's"
        points = [r for r in (doc or {"results": []})["results"]
                  if r["target"] == "sfu" and r.get("held") and r["server_cpu_pct"] < 75 and r["latency_ms"]["p95"] is not None]
        if not points:
            row(aim, f"no {name} run stored" if doc is None else "no such point", None)
            continue
        figures, ok = [], True
        for r in points:
            janus = _point(doc, "janus", r["load"])
            theirs = janus["latency_ms"]["p95"] if janus else None
            ok = ok and r["latency_ms"]["p95"] <= 5 and (theirs is None or r["latency_ms"]["p95"] <= theirs)
            figures.append(f"{r['latency_ms']['p95']} ms at {r['label']} (Janus {_fmt(theirs, 2)})")
        row(aim, ", ".join(figures), ok)
    for name, doc in (("fanout", fanout), ("meeting", meeting)):
        aim = f"{name}: time to first frame p95 < 300 ms at every held point"
        points = [r for r in (doc or {"results": []})["results"]
                  if r["target"] == "sfu" and r.get("held") and r["first_frame_ms"]["p95"] is not None]
        if not points:
            row(aim, f"no {name} run stored" if doc is None else "no held point", None)
            continue
        row(aim, ", ".join(f"{_fmt(r['first_frame_ms']['p95'], 0)} ms at {r['label']}" for r in points),
            all(r["first_frame_ms"]["p95"] < 300 for r in points))
    row("meeting: 20 x 20 held on one core, at server CPU per output packet ours/janus <= 0.8",
        *_cpu_ratio_aim(meeting, "meeting", 20, "janus", 0.8))
    for name, doc in (("fanout", fanout), ("meeting", meeting)):
        aim = f"{name}: RSS per participant <= Janus's"
        if doc is None:
            row(aim, f"no {name} run stored", None)
            continue
        common = sorted({r["load"] for r in doc["results"] if r["target"] == "sfu" and r.get("held")}
                        & {r["load"] for r in doc["results"] if r["target"] == "janus" and r.get("held")})
        if not common:
            row(aim, "no load held by both", None)
            continue
        ours, theirs = _point(doc, "sfu", common[-1]), _point(doc, "janus", common[-1])
        assert ours is not None and theirs is not None
        row(aim, f"{ours['rss_per_participant_mb']} / {theirs['rss_per_participant_mb']} MB at {ours['label']} (the largest load both held)",
            ours["rss_per_participant_mb"] <= theirs["rss_per_participant_mb"])
    return rows


def _cores_line(doc: dict[str, Any]) -> str:
    if "server_cores" not in doc:  # runs stored before media workers
        return f"server on core {doc.get('server_core')}, peers on {doc.get('peer_cpus')}\n"
    counts = sorted({_server_workers(r) for r in doc["results"]})
    plans = "; ".join(f"{n} media worker{'s' if n > 1 else ''}: server on cores {r.get('server_cores')}, peers on {r.get('peer_cpus')}"
                      for n in counts for r in [next(x for x in doc["results"] if _server_workers(x) == n)])
    return (plans or f"server on cores {doc['server_cores']}, peers on {doc.get('peer_cpus')}") + \
        "; server CPU is summed over its whole process tree\n"


def _udpio_line(doc: dict[str, Any]) -> str:
    """How the floor target sent, when the run has one."""
    if "udpio_accelerated" not in doc or not any(r["target"] == "floor" for r in doc["results"]):
        return ""
    how = ("`sendmmsg` (udpio's C extension)" if doc["udpio_accelerated"]
           else "one `sendto` per copy (udpio's pure-Python fallback: its C extension was not built)")
    return f"- The floor sent with {how}\n"


def results_md(docs: dict[str, dict[str, Any]], chart_names: dict[str, str], notes: str = "") -> str:
    parts = ["# Benchmark results\n",
             "Generated by `python -m benchmarks compare` (benchmarks/report.py) from an actual run on this machine; "
             "rerun it after any change to the forwarding path. Every figure below comes from that run.\n"]
    parts.append("## Aims of issue 9\n")
    parts.append("From the stored runs below (`sfu` is ours; *not measured*: the run lacks the point or the baseline; "
                 "CPU ratios use each target's figure at that same load).\n")
    parts.extend(issue9_aims(docs))
    parts.append("")
    for name, doc in docs.items():
        m = doc["machine"]
        results = doc["results"]
        parts.append(f"## Scenario `{name}`: {doc['describe']}\n")
        parts.append(
            f"- Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_mb'] // 1024} GiB, Linux {m['kernel']}, Python {m['python']}\n"
            f"- Command: `{doc['command']}` (commit {doc.get('commit', '?')}, {doc['started']})\n"
            f"- Window: {doc['options']['warmup']:g} s warm-up, then {doc['options']['duration']:g} s measured per point; "
            + _cores_line(doc)
            + f"- Machine load (1/5/15-min load average) before: {doc['load_before']}, after: {doc['load_after']} "
            f"(other work was running on this shared 2-core machine; CPU per packet is the server's own CPU time, so it is "
            f"less affected by that than throughput and latency)\n"
            + _udpio_line(doc)
        )
        parts.append(f"![{name}]({chart_names[name]})\n")
        parts.append(table(results))
        parts.append("✗ = not held (loss ≥ 1% or failures); each target stops at its first point not held. "
                     "↻ = measured a second time because, the first time, the server waited over 10% of the window "
                     "for its core (other work on the machine) and the point was not held; the second measurement is shown.\n")
        rat = doc.get("ratios", {})
        if rat:
            parts.append("### Ratios\n")
            parts.append("| | sfu | baseline | sfu / baseline |\n|---|---:|---:|---:|")
            for other, r in rat.items():
                c = r["cpu_per_packet_at_best"]
                parts.append(f"| CPU µs per output packet, each at its highest held load, sfu vs {other} | {c['sfu']} | {c[other]} | **{c['ratio']}** |")
                s = r.get("cpu_per_packet_same_load")
                if s:
                    parts.append(f"| CPU µs per output packet at the same load ({s['load']}), sfu vs {other} | {s['sfu']} | {s[other]} | **{s['ratio']}** |")
                h = r["highest_held"]
                parts.append(f"| highest load held (output pkt/s), sfu vs {other} | {h['sfu']} ({_fmt(h['sfu_out_pps'])}) | "
                             f"{h[other]} ({_fmt(h[f'{other}_out_pps'])}) | **{h['ratio_out_pps']}** |")
            parts.append("")
        by_workers = workers_table(results)
        if by_workers:
            parts.append("### By media worker processes\n")
            parts.append("`sfu` is one process; `sfu-wN` is `sfu serve --workers N` (a front process and N media workers). "
                         "Server CPU is the whole process tree's. How to read these on a 2-core machine whose load peers "
                         "share the cores: see the notes below.\n")
            parts.extend(by_workers)
            parts.append("")
        by_load = cpu_by_load(results)
        if by_load:
            parts.append("### Server CPU per output packet, load by load\n")
            parts.extend(by_load)
            parts.append("\n✗ = that point was not held.\n")
        prof = doc.get("profile")
        if prof and prof.get("samples"):
            parts.append(f"### Where the server's time goes ({prof.get('label', '')})\n")
            parts.append(f"py-spy (`record --native`, 100 Hz), {prof['samples']} busy samples of the sfu process during a "
                         "separate window at the same load (sampling slows the server, so that window's figures are not in "
                         "the table). Time in a system call shows as its libc wrapper (`sendmsg`): that is kernel time. "
                         "Shares of busy samples:\n")
            if prof.get("categories"):
                parts.append("| where (innermost frame) | % |\n|---|---:|")
                for name, pct in prof["categories"]:
                    parts.append(f"| {name} | {pct} |")
                parts.append("")
            parts.append("| function (self) | % | our code and its libraries (inclusive) | % |\n|---|---:|---|---:|")
            for (a, pa), (b, pb) in zip(prof["self"], prof["inclusive"] + [("", "")] * len(prof["self"])):
                parts.append(f"| `{a}` | {pa} | {f'`{b}`' if b else ''} | {pb} |")
            parts.append("")
        parts.append("### Aims of issue 5\n")
        parts.extend(aims_check(doc))
        parts.append("")
    if notes:
        parts.append(notes.strip() + "\n")
    parts.append(AIMS + "\n")
    parts.append(METHOD)
    return "\n".join(parts)


def update_results_md(doc: dict[str, Any], results_dir: Path) -> Path:
    """Store this scenario's compare document next to RESULTS.md and regenerate RESULTS.md
    from every scenario stored there."""
    store = results_dir / "results"
    store.mkdir(parents=True, exist_ok=True)
    name = doc["scenario"]
    (store / f"{name}.json").write_text(json.dumps(doc, indent=1, default=str))
    chart(doc["results"], store / f"{name}.png", f"{name}: {doc['describe']}")
    return regenerate_results_md(results_dir)


def regenerate_results_md(results_dir: Path) -> Path:
    """RESULTS.md from every scenario document stored in results_dir/results."""
    store = results_dir / "results"
    docs: dict[str, dict[str, Any]] = {}
    charts: dict[str, str] = {}
    order = ["fanout", "meeting", "rooms", "joinstorm"]
    for path in sorted(store.glob("*.json"), key=lambda p: order.index(p.stem) if p.stem in order else 99):
        docs[path.stem] = json.loads(path.read_text())
        charts[path.stem] = f"results/{path.stem}.png"
    target = results_dir / "RESULTS.md"
    notes = store / "NOTES.md"  # hand-written reading of the latest run, if any
    target.write_text(results_md(docs, charts, notes.read_text() if notes.exists() else ""))
    return target
