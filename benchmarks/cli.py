"""``python -m benchmarks``: the load harness.

    python -m benchmarks run --target sfu|janus|relay|floor --scenario fanout|meeting|rooms|joinstorm [options]
    python -m benchmarks compare --scenario fanout [--targets sfu,janus,floor,relay] [options]
    python -m benchmarks compare --scenario rooms --targets sfu --workers 1,2

``--workers N`` is the server's media worker processes (``sfu serve --workers N``; a comma
list runs the sfu target once per count, named ``sfu``, ``sfu-w2``...); the server's CPU is
that of its whole process tree. ``--split-rooms`` spreads each room over the workers (``sfu
serve --room-capacity``: the room's tracks cross between workers through pipes), e.g.
``run --target sfu --scenario fanout --workers 2 --split-rooms``. ``--peers`` is the number
of load-peer processes.

Before anything runs, the harness installs what it lacks (Janus from Debian's packages when a
Janus target is asked for; matplotlib and py-spy with pip), encodes the media clip once, and
then re-executes itself inside the private network namespace of ``tests/netns.sh`` (nothing
leaves the machine). ``run`` writes results.json, table.md and chart.png under --out;
``compare`` runs the targets one after another on the same scenario and the same peers, and
also regenerates benchmarks/RESULTS.md (unless --no-results-md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .runner import SCENARIOS, Options, core_plan, run_point, run_target, summary_line, target_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def in_namespace() -> bool:
    return os.environ.get("SFU_TEST_NETNS") == "1"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Load harness: our SFU side by side with Janus, a MediaRelay server and the floor "
                                "(the same fan-out with no SFU logic)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
        sp.add_argument("--points", help="comma-separated loads instead of the scenario's list (e.g. 1,10,50)")
        sp.add_argument("--duration", type=float, default=15.0, help="measured seconds per point (default 15)")
        sp.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up before measuring (default 5)")
        sp.add_argument("--peers", type=int, default=4, help="load-peer processes (default 4)")
        sp.add_argument("--workers", default="1",
                        help="sfu target: media worker processes of the server (sfu serve --workers); a comma list runs "
                             "each in turn (default 1: one process, pinned to one core; N: the first N cores)")
        sp.add_argument("--room-size", type=int, default=4, help="rooms scenario: participants per room (default 4)")
        sp.add_argument("--split-rooms", action="store_true",
                        help="with --workers N > 1: spread each room over the N workers (sfu serve --room-capacity: a "
                             "worker takes 1/N of the room's participants, tracks are piped between workers); results "
                             "are named sfu-wN-split")
        sp.add_argument("--probes", type=int, default=4, help="latency probe subscribers per point (default 4)")
        sp.add_argument("--stop-loss", type=float, default=1.0, help="stop a target after a point with loss at or over this %% (default 1)")
        sp.add_argument("--rate", type=float, default=10.0, help="joinstorm: joins per second (default 10)")
        sp.add_argument("--peer-batch-ms", type=float, default=2.0,
                        help="counting-peer workers take packets in batches this far apart (default 2; 0: off)")
        sp.add_argument("--out", type=Path, default=HERE / "out", help="output folder (default benchmarks/out)")
        sp.add_argument("--log-level", default="WARNING")

    run = sub.add_parser("run", help="one target, every point of a scenario")
    run.add_argument("--target", choices=["sfu", "janus", "relay", "floor"], required=True)
    run.add_argument("--profile", action="store_true", help="also profile the server (py-spy) during each measured window")
    common(run)

    compare = sub.add_parser("compare", help="several targets one after another on the same scenario")
    compare.add_argument("--targets", default="sfu,janus,floor,relay")
    compare.add_argument("--no-profile", action="store_true", help="skip the extra profiled sfu point")
    compare.add_argument("--no-results-md", action="store_true", help="do not update benchmarks/RESULTS.md")
    compare.add_argument("--results-dir", type=Path, default=HERE, help=argparse.SUPPRESS)
    common(compare)

    rep = sub.add_parser("report", help="regenerate benchmarks/RESULTS.md from benchmarks/results/*.json (no run)")
    rep.add_argument("--results-dir", type=Path, default=HERE, help=argparse.SUPPRESS)
    return p


def _pip_install(*packages: str) -> None:
    say(f"installing {' '.join(packages)} (pip)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages], check=True)


def prepare(targets: list[str], out: Path) -> Path:
    """Install what is missing and build the clip; outside the namespace (network needed)."""
    from .media import build_clip
    from .targets import install_janus, janus_installed

    need = []
    if importlib.util.find_spec("matplotlib") is None:
        need.append("matplotlib")
    if not Path(sys.executable).with_name("py-spy").exists():
        need.append("py-spy")
    if need:
        if in_namespace():
            say(f"warning: {', '.join(need)} missing and no network here: no chart / no profile")
        else:
            _pip_install(*need)
    if "janus" in targets and not janus_installed():
        if in_namespace():
            raise SystemExit("janus is not installed and this namespace has no network: run the harness outside it once")
        say("installing janus (apt-get)")
        install_janus()
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("taskset", "util-linux")):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0 and not in_namespace():
            say(f"installing {package} (apt-get)")
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
    media = Path(os.environ.get("BENCH_MEDIA_CACHE", HERE / "out" / "media"))
    say("preparing the pre-encoded clip (encoded once, then cached)")
    return build_clip(media)


def options(args: argparse.Namespace, clip: Path) -> Options:
    return Options(
        duration=args.duration,
        warmup=args.warmup,
        peers=max(1, args.peers),
        server_workers=[max(1, int(x)) for x in str(args.workers).split(",") if x.strip()],
        room_size=max(2, args.room_size),
        split_rooms=args.split_rooms,
        probes=args.probes,
        points=[int(x) for x in args.points.split(",")] if args.points else None,
        stop_loss_pct=args.stop_loss,
        storm_rate=args.rate,
        peer_batch_ms=args.peer_batch_ms,
        out=args.out,
        clip=clip,
        profile=getattr(args, "profile", False),
        log_level=args.log_level.upper(),
    )


def udpio_accelerated() -> bool:
    """Whether udpio's C extension (sendmmsg) is what the floor target uses in this venv."""
    from sfu.media import udpio

    return udpio.ACCELERATED


def _document(args: argparse.Namespace, o: Options, argv: list[str], started: str, load_before: str) -> dict[str, Any]:
    server_cores, peer_cpus = core_plan(max(o.server_workers))
    scenario = SCENARIOS[args.scenario]
    return {
        "scenario": scenario.name,
        "describe": scenario.describe,
        "unit": scenario.unit,
        "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv),
        "commit": report._git_commit(),
        "started": started,
        "machine": report.machine(),
        "server_cores": server_cores,
        "peer_cpus": peer_cpus,
        "options": {"duration": o.duration, "warmup": o.warmup, "peers": o.peers, "server_workers": o.server_workers,
                    "room_size": o.room_size, "split_rooms": o.split_rooms, "probes": o.probes, "stop_loss_pct": o.stop_loss_pct, "peer_batch_ms": o.peer_batch_ms},
        "load_before": load_before,
        "udpio_accelerated": udpio_accelerated(),
        "results": [],
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.command == "report":
        say(f"wrote {report.regenerate_results_md(args.results_dir)}")
        return 0
    targets = [args.target] if args.command == "run" else [t.strip() for t in args.targets.split(",") if t.strip()]
    args.out = args.out.resolve()
    clip = prepare(targets, args.out)
    if not in_namespace():
        netns = REPO / "tests" / "netns.sh"
        say("entering the private network namespace (tests/netns.sh)")
        os.execv("/bin/bash", ["bash", str(netns), sys.executable, "-m", "benchmarks", *argv])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # SIGTERM/SIGINT unwind normally, so the server and the workers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    o = options(args, clip)
    scenario = SCENARIOS[args.scenario]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    doc = _document(args, o, argv, started, report.load_average())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out / (f"{args.command}-{args.scenario}-{'-'.join(targets)}-{stamp}")
    for target in targets:
        for n in o.server_workers if target == "sfu" else [1]:
            say(f"=== {target_name(target, n, o.split_rooms)}: scenario {scenario.name} ({scenario.describe}) ===")
            doc["results"].extend(run_target(target, scenario, o, say, n))
            report.write_run(out_dir, doc)  # keep partial results if a later target fails

    if args.command == "compare":
        doc["ratios"] = report.ratios(doc["results"])
        if not args.no_profile and "sfu" in targets:
            best = report.best_held(doc["results"], "sfu")
            sfu_points = [r for r in doc["results"] if r["target"] == "sfu" and "error" not in r]
            ref = best or (sfu_points[-1] if sfu_points else None)
            if ref is not None:
                say(f"=== profiling sfu at {ref['label']} (separate window, figures not used) ===")
                prof_opts = Options(**{**o.__dict__, "profile": True})
                r = run_point("sfu", scenario, ref["load"], prof_opts, say)
                if r.get("profile"):
                    doc["profile"] = dict(r["profile"], label=f"{scenario.name} {r['label']}, {r.get('out_pps', 0):,.0f} pkt/s out")

    doc["load_after"] = report.load_average()
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    paths = report.write_run(out_dir, doc)
    say("--- summary ---")
    for r in doc["results"]:
        say(summary_line(r))
    if doc.get("ratios"):
        say("ratios: " + json.dumps(doc["ratios"]))
    if args.command == "compare" and not args.no_results_md:
        md = report.update_results_md(doc, args.results_dir)
        say(f"wrote {md}")
    say(f"wrote {paths['json']}, {paths['table']}, {paths['chart']}")
    print(paths["json"])
    return 0
