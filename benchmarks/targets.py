"""The servers under test, started by the harness (parent side), each in its own process.

``sfu``: ``python -m sfuserver.cli serve`` (the ``sfu serve`` command) with credentials in
``SFU_*`` variables and ``--max-participants`` raised for rooms over Twilio's 50. ``janus``: Debian's Janus 1.1.2 with only its videoroom plugin and its
HTTP transport, on loopback. ``relay``: :mod:`benchmarks.baselines.relay`. ``floor``:
:mod:`benchmarks.baselines.floor` (plain UDP fan-out, no SFU logic), on the test interface.

The process is pinned to its cores with ``taskset`` when the machine has two or more (one
core, or the first N for ``sfu serve --workers N``), and its CPU time and RSS are read from
``/proc`` for the whole process tree: the server and every child it started (media workers),
all threads included, plus what children already reaped had used (the kernel's accounting).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SIOCGIFADDR = 0x8915


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (its media workers, for ``sfu serve
    --workers N``), from the parent pids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of the process tree under ``pid``: each process's utime + stime, plus the
    cutime + cstime of children it has already reaped (a worker that died in the window), so
    no CPU is counted twice or lost."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = _stat_fields(p)
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def cpu_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat):
    on a shared machine, how much other work kept the server off its core."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def tree_cpu_wait_seconds(pid: int) -> float:
    return sum(cpu_wait_seconds(p) for p in process_tree(pid))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def tree_rss_bytes(pid: int) -> int:
    """The RSS of every process of the tree, summed (pages shared between them, such as the
    interpreter's libraries, count once per process)."""
    total = 0
    for p in process_tree(pid):
        try:
            total += rss_bytes(p)
        except OSError:
            pass
    return total


@functools.cache
def sfu_serve_takes_workers() -> bool:
    """Whether this tree's ``sfu serve`` has ``--workers`` (media worker processes)."""
    out = subprocess.run([sys.executable, "-m", "sfuserver.cli", "serve", "--help"], capture_output=True, text=True, timeout=60)
    return "--workers" in out.stdout


def _http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only
        return json.loads(response.read())


class Server:
    name = ""

    def __init__(self, workdir: Path, cores: list[int] | None, workers: int = 1, room_capacity: int | None = None) -> None:
        self.workdir = workdir
        self.cores = cores
        self.workers = workers  # media worker processes (only the sfu target has them)
        self.room_capacity = room_capacity  # sfu serve --room-capacity: a room past it spills onto another worker
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        if self.cores and shutil.which("taskset"):
            argv = ["taskset", "-c", ",".join(map(str, self.cores)), *argv]  # taskset execs: same pid; children inherit
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        log.close()

    def _wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            try:
                _http_json(url, timeout=2.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer {url} in {timeout:.0f}s; see {self.log_path}")
                time.sleep(0.1)

    max_participants = 50  # the most participants the scenario puts in one room

    def start(self, rooms: list[str]) -> None:
        raise NotImplementedError

    def client_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class SfuServer(Server):
    name = "sfu"

    def start(self, rooms: list[str]) -> None:
        from sfu.credentials import generate

        self.credentials = generate()
        env = dict(os.environ)
        env.update(
            SFU_ACCOUNT_SID=self.credentials.account_sid,
            SFU_AUTH_TOKEN=self.credentials.auth_token,
            SFU_API_KEY_SID=self.credentials.api_key_sid,
            SFU_API_KEY_SECRET=self.credentials.api_key_secret,
        )
        data = self.workdir / "sfu-data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "sfuserver.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(data), "--log-level", "WARNING", "--max-participants", str(max(self.max_participants, 50)),
                # Every load peer connects from 127.0.0.1, many at once; and stop at once when told.
                "--max-connections-per-ip", "0", "--drain-timeout", "0", "--udp-port", "0"]
        if sfu_serve_takes_workers():
            argv += ["--workers", str(self.workers)]  # 1: today's single process (the default is one per core)
        elif self.workers != 1:
            raise RuntimeError(f"this tree's sfu serve has no --workers option: cannot run {self.workers} media workers")
        if self.room_capacity is not None:
            argv += ["--room-capacity", str(self.room_capacity)]
        self._spawn(argv, env)
        self._wait_http(f"http://127.0.0.1:{self.port}/healthz")

    def client_info(self) -> dict[str, Any]:
        return {"kind": "sfu", "url": f"ws://127.0.0.1:{self.port}/signaling", "credentials": self.credentials}


class RelayServer(Server):
    name = "relay"

    def start(self, rooms: list[str]) -> None:
        argv = [sys.executable, "-m", "benchmarks.baselines.relay", "--port", str(self.port)]
        self._spawn(argv)
        self._wait_http(f"http://127.0.0.1:{self.port}/healthz")

    def client_info(self) -> dict[str, Any]:
        return {"kind": "relay", "url": f"http://127.0.0.1:{self.port}"}


def janus_installed() -> bool:
    return shutil.which("janus") is not None and (JANUS_LIB / "plugins" / "libjanus_videoroom.so").exists()


def install_janus() -> None:
    """``apt-get install janus`` (Debian's Janus 1.1.2); needs the real network, so run it
    before entering the private namespace."""
    if janus_installed():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "janus"], check=True, env=env)
    if not janus_installed():
        raise RuntimeError("janus installed but its videoroom plugin is not where expected")


class JanusServer(Server):
    """Janus with a config of our own: videoroom plugin and HTTP transport only, HTTP on
    127.0.0.1, ICE gathering on the namespace's test interface only."""

    name = "janus"

    def _write_config(self, conf: Path) -> None:
        for sub, lib in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
            folder = conf / sub
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / lib
            if not link.exists():
                link.symlink_to(JANUS_LIB / sub / lib)
        for sub in ("events", "loggers"):
            (conf / sub).mkdir(parents=True, exist_ok=True)
        interface = os.environ.get("BENCH_ICE_INTERFACE", "t0")
        # Janus's default is one thread per handle; on one core, hundreds of threads waking per
        # packet cost more than the forwarding. Janus's own advice for large deployments is a
        # few static event loops (one per core), so: one, as it has one core.
        event_loops = int(os.environ.get("BENCH_JANUS_EVENT_LOOPS", "1"))
        (conf / "janus.jcfg").write_text(
            f"""general: {{
	configs_folder = "{conf}"
	plugins_folder = "{conf}/plugins"
	transports_folder = "{conf}/transports"
	events_folder = "{conf}/events"
	loggers_folder = "{conf}/loggers"
	debug_level = 2
	session_timeout = 120
	event_loops = {event_loops}
	protected_folders = ["/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr", "/var"]
}}
certificates: {{
}}
media: {{
	rtp_port_range = "20000-60000"
}}
nat: {{
	nice_debug = false
	full_trickle = false
	ice_enforce_list = "{interface}"
	ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
	broadcast = false
}}
"""
        )
        (conf / "janus.transport.http.jcfg").write_text(
            f"""general: {{
	json = "compact"
	base_path = "/janus"
	http = true
	port = {self.port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
cors: {{
}}
"""
        )
        (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")

    def start(self, rooms: list[str]) -> None:
        if not janus_installed():
            raise RuntimeError("janus is not installed (python -m benchmarks installs it before entering the namespace)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "janus-conf"
        self._write_config(conf)
        self._spawn(["janus", "-F", str(conf), "-C", str(conf / "janus.jcfg"), "-o"])
        base = f"http://127.0.0.1:{self.port}/janus"
        self._wait_http(f"{base}/info")
        session = _http_json(base, {"janus": "create", "transaction": "c"})["data"]["id"]
        handle = _http_json(f"{base}/{session}", {"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": "a"})["data"]["id"]
        self.rooms: dict[str, int] = {}
        for i, name in enumerate(rooms):
            room_id = 1000 + i
            body = {
                "request": "create",
                "room": room_id,
                "description": name,
                "publishers": 1000,
                "bitrate": 0,
                "fir_freq": 0,
                "audiocodec": "opus",
                "videocodec": "vp8",
                "notify_joining": False,
            }
            reply = _http_json(f"{base}/{session}/{handle}", {"janus": "message", "body": body, "transaction": f"r{i}"})
            data = reply.get("plugindata", {}).get("data", {})
            if data.get("videoroom") != "created":
                raise RuntimeError(f"janus could not create room {name}: {reply}")
            self.rooms[name] = room_id
        _http_json(f"{base}/{session}", {"janus": "destroy", "transaction": "d"})

    def client_info(self) -> dict[str, Any]:
        return {"kind": "janus", "url": f"http://127.0.0.1:{self.port}/janus", "rooms": self.rooms}


def media_address() -> str:
    """The IPv4 address of the namespace's test interface (``BENCH_ICE_INTERFACE``, default
    t0), where the other targets' media flows over ICE; 127.0.0.1 when it has none."""
    interface = os.environ.get("BENCH_ICE_INTERFACE", "t0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            request = struct.pack("256s", interface.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, request)[20:24])
        except OSError:
            return "127.0.0.1"


class FloorServer(Server):
    """:mod:`benchmarks.baselines.floor`: one UDP socket on the test interface, no HTTP."""

    name = "floor"

    def start(self, rooms: list[str]) -> None:
        self.host = media_address()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self.host, 0))
            self.port = int(s.getsockname()[1])
        self._spawn([sys.executable, "-m", "benchmarks.baselines.floor", "--host", self.host, "--port", str(self.port)])
        self._wait_pong()

    def _wait_pong(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"floor exited with {self.process.returncode}; see {self.log_path}")
                s.sendto(b"PING", (self.host, self.port))
                try:
                    if s.recv(16) == b"PONG":
                        return
                except OSError:  # timeout, or refused before the floor has bound its port
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"floor did not answer PING in {timeout:.0f}s; see {self.log_path}")

    def client_info(self) -> dict[str, Any]:
        return {"kind": "floor", "host": self.host, "port": self.port}


SERVERS: dict[str, type[Server]] = {"sfu": SfuServer, "janus": JanusServer, "relay": RelayServer, "floor": FloorServer}
