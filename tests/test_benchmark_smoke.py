"""The load harness runs end to end on a tiny fanout against our server and the floor (issues 5, 9),
and on a tiny `rooms` scenario with the server's CPU summed over its process tree (issue 10).

Not a timed test and no speed bar: it checks that `python -m benchmarks compare` still produces
every figure for our server and for the floor target (the same fan-out with no SFU logic), that
a 1 -> 3 fanout on an idle server loses (almost) nothing, and that the report it writes compares
the two (ratios, CPU by load, issue 9's aims), so the harness cannot rot. The only wait is the
harness's own measurement window.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def check_point(r: dict[str, Any], context: str) -> None:
    """Every figure of a held 1 -> 3 fanout point came out."""
    assert "error" not in r, context
    assert r["failures"] == 0, context
    assert r["out_pps"] > 3 * 150, context  # 3 subscribers x (~160 video + 50 audio) packets/s
    assert r["in_pps"] > 150, context
    assert r["cpu_us_per_packet"] is not None and r["cpu_us_per_packet"] > 0, context
    assert r["server_cpu_pct"] > 0 and r["peers_cpu_pct"] > 0, context
    assert r["latency_ms"]["samples"] > 0 and r["latency_ms"]["streams_matched"] == 2, context
    assert r["latency_ms"]["p50"] is not None and r["latency_ms"]["p50"] >= 0, context
    assert r["join_ms"]["samples"] == 4 and r["join_ms"]["p50"] > 0, context
    assert r["first_frame_ms"]["samples"] == 3, context
    assert r["rss_mb"] > 0, context
    # and the server kept up
    assert r["loss_pct"] < 1.0, context
    assert r["held"], context


@pytest.mark.timeout(400)
@pytest.mark.bench
def test_fanout_smoke_against_the_floor(tmp_path: Path, netns: None) -> None:
    argv = [sys.executable, "-m", "benchmarks", "compare", "--targets", "sfu,floor", "--scenario", "fanout",
            "--points", "3", "--warmup", "1", "--duration", "4", "--peers", "3", "--probes", "2",
            "--no-profile", "--results-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results_path = Path(proc.stdout.strip().splitlines()[-1])
    doc = json.loads(results_path.read_text())
    table = (results_path.parent / "table.md").read_text()
    assert table.count("| sfu |") == 1 and table.count("| floor |") == 1, table
    sfu, floor = doc["results"]
    assert (sfu["target"], floor["target"]) == ("sfu", "floor")
    for r in (sfu, floor):
        check_point(r, json.dumps(r, indent=1) + "\n" + proc.stderr[-3000:])

    # the comparison: ours / floor at the same load, in the document and in RESULTS.md
    same = doc["ratios"]["floor"]["cpu_per_packet_same_load"]
    assert same["load"] == "1->3"
    assert same["ratio"] == pytest.approx(sfu["cpu_us_per_packet"] / floor["cpu_us_per_packet"], rel=0.01)
    md = (tmp_path / "RESULTS.md").read_text()
    assert f"| CPU µs per output packet at the same load (1->3), sfu vs floor | {sfu['cpu_us_per_packet']} | {floor['cpu_us_per_packet']} |" in md
    assert "| load | sfu µs / out pkt | floor µs / out pkt | sfu / floor |" in md
    assert "## Aims of issue 9" in md
    # 1->200 was not run: the aim is reported, as not measured
    assert "| fanout: server CPU per output packet at 1->200, ours/floor <= 1.6 | sfu ran up to 1->3 | not measured |" in md


def point(target: str, load: int, label: str, held: bool = True, cpu: float = 10.0, cpu_pct: float = 50.0,
          p95: float = 3.0, first_frame: float = 200.0, rss: float = 0.3) -> dict[str, Any]:
    return {"target": target, "load": load, "label": label, "held": held, "cpu_us_per_packet": cpu, "server_cpu_pct": cpu_pct,
            "out_pps": 210.0 * load, "loss_pct": 0.0 if held else 5.0, "failures": 0, "latency_ms": {"p95": p95},
            "first_frame_ms": {"p95": first_frame}, "rss_per_participant_mb": rss}


def test_issue9_aims_say_met_or_not_met_with_the_figure() -> None:
    from benchmarks.report import issue9_aims

    fanout = {"results": [
        point("sfu", 100, "1->100", cpu=9.0, cpu_pct=40, p95=3.0, first_frame=250),
        point("sfu", 200, "1->200", cpu=8.0, cpu_pct=80, p95=9.0, first_frame=280, rss=0.3),
        point("sfu", 300, "1->300", held=False),
        point("janus", 100, "1->100", cpu=12.0, p95=4.0),
        point("janus", 200, "1->200", cpu=11.0, p95=5.0, rss=0.28),
        point("janus", 300, "1->300", held=False),
        point("floor", 200, "1->200", cpu=4.0),
    ]}
    meeting = {"results": [point("sfu", 16, "16 x 16", p95=6.0), point("sfu", 20, "20 x 20", held=False),
                           point("janus", 16, "16 x 16", p95=7.0), point("janus", 20, "20 x 20", held=False)]}
    rows = issue9_aims({"fanout": fanout, "meeting": meeting})
    verdicts = {row.split(" | ")[0].lstrip("| "): row.rsplit(" | ", 1)[1].rstrip(" |") for row in rows[2:]}
    assert verdicts == {
        "fanout: server CPU per output packet at 1->200, ours/janus <= 0.8": "met",  # 8 / 11
        "fanout: server CPU per output packet at 1->200, ours/floor <= 1.6": "not met",  # 8 / 4
        "fanout: highest fan-out held on one core >= Janus's": "met",
        "fanout: p95 added latency at every point held below 75% server CPU <= 5 ms and <= Janus's": "met",  # 1->200 is at 80%
        "meeting: p95 added latency at every point held below 75% server CPU <= 5 ms and <= Janus's": "not met",  # 6 ms
        "fanout: time to first frame p95 < 300 ms at every held point": "met",
        "meeting: time to first frame p95 < 300 ms at every held point": "met",
        "meeting: 20 x 20 held on one core, at server CPU per output packet ours/janus <= 0.8": "not met",
        "fanout: RSS per participant <= Janus's": "not met",  # 0.3 > 0.28 at 1->200
        "meeting: RSS per participant <= Janus's": "met",
    }, "\n".join(rows)
    assert "8.0 / 11.0 µs = **0.73** at 1->200" in rows[2] and "8.0 / 4.0 µs = **2.00** at 1->200" in rows[3]

    # a run without the point, or without the baseline, measures nothing: it does not pass
    rows = issue9_aims({"fanout": {"results": [point("sfu", 50, "1->50")]}})
    assert all(row.endswith("| not measured |") for row in rows[2:4]), "\n".join(rows)


def test_server_cpu_is_summed_over_the_whole_process_tree() -> None:
    """A front process whose child (a media worker) does the work: the tree's CPU includes the
    child's, which the front's own figure does not."""
    from benchmarks.targets import cpu_seconds, process_tree, tree_cpu_seconds

    child = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"
    front = f"import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-c', {child!r}])\nprint(p.pid, flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", front], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        assert process_tree(proc.pid) == [proc.pid, worker]
        deadline = time.monotonic() + 30
        while cpu_seconds(worker) < 0.3:  # polls a condition; the child spins
            assert time.monotonic() < deadline, "the child never used CPU"
            time.sleep(0.05)
        tree, front_only, child_only = tree_cpu_seconds(proc.pid), cpu_seconds(proc.pid), cpu_seconds(worker)
        assert tree >= front_only + child_only - 0.02
        assert tree > front_only + 0.25
    finally:
        for pid in process_tree(proc.pid)[1:]:
            subprocess.run(["kill", str(pid)])
        proc.kill()
        proc.wait(10)


def sfu_takes_workers() -> bool:
    from benchmarks.targets import sfu_serve_takes_workers

    return sfu_serve_takes_workers()



@pytest.mark.timeout(400)
@pytest.mark.bench
def test_rooms_smoke_reports_rooms_held_and_cpu_over_the_server_processes(tmp_path: Path, netns: None) -> None:
    """`compare --scenario rooms` with 1 and 2 rooms of 4: every participant publishes and gets
    the other three; held; CPU per output packet from the whole server tree; with media
    workers (when `sfu serve` has them) one run per worker count and a table comparing them."""
    from benchmarks.runner import STARVED_PCT

    counts = [1, 2] if sfu_takes_workers() else [1]
    argv = [sys.executable, "-m", "benchmarks", "compare", "--targets", "sfu", "--scenario", "rooms",
            "--workers", ",".join(map(str, counts)), "--points", "1,2", "--warmup", "1", "--duration", "3",
            "--peers", "2", "--probes", "1", "--no-profile", "--results-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    results = doc["results"]
    context = json.dumps(results, indent=1)[:3000] + "\n" + proc.stderr[-3000:]
    assert [(r["target"], r["label"]) for r in results] == [
        (name, f"{rooms} rooms x 4") for name in ["sfu" if n == 1 else f"sfu-w{n}" for n in counts] for rooms in (1, 2)], context
    for r in results:
        rooms = r["load"]
        assert "error" not in r and r["failures"] == 0, context
        # held, unless other work on this shared machine kept the server off its cores (the
        # harness measured such a point twice already): that says nothing of the scenario
        assert r["held"] or r["server_cpu_wait_pct"] > STARVED_PCT, context
        assert (r["participants"], r["video_subscriptions"]) == (4 * rooms, 12 * rooms), context
        assert r["out_pps"] > 12 * rooms * 150, context  # each subscription ~160 video + 50 audio packets/s
        assert r["server_cpu_pct"] > 0 and r["peers_cpu_pct"] > 0 and r["cpu_us_per_packet"] > 0, context
        # the server's figures cover its media workers: a front and N workers
        assert r["server_processes"] >= (1 if r["server_workers"] == 1 else 1 + r["server_workers"]), context
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Scenario `rooms`" in md
    if len(counts) > 1:
        assert "### By media worker processes" in md and "| sfu-w2 | 2 |" in md, md
