"""The load harness runs end to end on a tiny fanout against our server (issue 5).

Not a timed test and no speed bar: it checks that `python -m benchmarks run` still produces
every figure and that a 1 -> 3 fanout on an idle server loses (almost) nothing, so the
harness cannot rot. The only wait is the harness's own measurement window.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(280)
@pytest.mark.bench
def test_fanout_smoke(tmp_path: Path, netns: None) -> None:
    argv = [sys.executable, "-m", "benchmarks", "run", "--target", "sfu", "--scenario", "fanout",
            "--points", "3", "--warmup", "1", "--duration", "4", "--workers", "3", "--probes", "2",
            "--out", str(tmp_path)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results_path = Path(proc.stdout.strip().splitlines()[-1])
    doc = json.loads(results_path.read_text())
    assert (results_path.parent / "table.md").read_text().count("| sfu |") == 1
    [r] = doc["results"]
    context = json.dumps(r, indent=1) + "\n" + proc.stderr[-3000:]
    assert "error" not in r, context
    assert r["failures"] == 0, context
    # figures come out
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
