"""Load-peer worker processes: each hosts many aiortc peers on one asyncio (uvloop) loop.

What a load peer costs is kept well below what the server spends on the same packet:

* publishers send the pre-encoded clip (:mod:`benchmarks.media`): header pack, SRTP
  protect, ``sendto``; no encoder, no aiortc ``RtpPacket`` objects;
* subscribers never decrypt nor parse media: RTP datagrams are taken off the UDP socket
  before aioice tries to parse them as STUN and before SRTP, and only the clear-text RTP
  header is read (sequence number, timestamp, SSRC, marker). Per SSRC that gives packets,
  bytes, sequence gaps (loss) and video frames (marker bits). Until the first keyframe of a
  video stream has arrived, its packets are also decrypted to find that keyframe (time to
  first frame), and, like a browser that cannot decode yet, the subscriber sends a PLI every
  0.3 s; after that, never.
* the floor target's legs have no peer connection: their RTP arrives unprotected on a plain
  UDP socket (``Leg.receive_plain``) and goes through the same counting code;
* a few *probe* subscribers (in a worker of their own, so their loop is idle) also log the
  arrival time of the last packet of every video frame, for latency.

Counting subscribers therefore send no RTCP receiver reports or NACKs; publishers send no
sender reports: the server handles less RTCP than with browsers (RESULTS.md says so).

The parent talks to a worker over a ``multiprocessing`` pipe: ``(request id, command,
argument)`` in, ``(request id, result)`` out; commands run as tasks, so ``status`` answers
while a long ``join`` is under way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import struct
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_SEQ_TS_SSRC = struct.Struct("!HII")
VIDEO_CODECS = {"vp8", "vp9", "h264", "av1"}
JOIN_TIMEOUT = 40.0
PLI_INTERVAL = 0.3  # s between keyframe requests of a subscriber still without a keyframe


@dataclass
class Spec:
    """One load participant."""

    index: int
    identity: str
    room: str
    publish: bool
    subscribe: bool
    probe: bool = False
    start_at: float | None = None  # monotonic time to start joining (join storms); None: at once
    salt: int = 0


class InStream:
    """One inbound SSRC on one peer connection."""

    __slots__ = ("ssrc", "kind", "packets", "bytes", "highest", "last_seq", "frames", "key_ts", "first_frame", "arrivals", "last_pli")

    def __init__(self, ssrc: int, kind: str, seq: int, probe: bool) -> None:
        self.ssrc = ssrc
        self.kind = kind
        self.packets = 0
        self.bytes = 0
        self.highest = 0  # extended sequence number, relative to the first packet seen
        self.last_seq = seq
        self.frames = 0
        self.key_ts: int | None = None
        self.first_frame: float | None = None
        self.last_pli = 0.0
        self.arrivals: deque[tuple[int, float]] | None = deque(maxlen=20000) if probe and kind == "video" else None


class Leg:
    """One peer connection of a participant and what arrives on it."""

    def __init__(self, participant: "Participant", role: str) -> None:
        self.participant = participant
        self.role = role  # "main" (one pc does both), "publish" or "subscribe"
        self.pc: Any = None
        self.dtls: Any = None
        self.streams: dict[int, InStream] = {}
        self.t_start = time.monotonic()
        self.t_connected: float | None = None
        self._pt_kinds: dict[int, str] | None = None
        self._plain = False
        self._ask_keyframe: Callable[[int], None] | None = None
        self.connected = asyncio.Event()

    def attach(self, pc: Any) -> None:
        self.pc = pc
        _UNBOUND.append(self)

        def on_state() -> None:
            if pc.connectionState == "connected":
                self.mark_connected()

        pc.on("connectionstatechange", on_state)

    def receive_plain(self, kinds: dict[int, str], ask_keyframe: Callable[[int], None]) -> None:
        """This leg has no peer connection (the floor target): RTP arrives unprotected, with
        these payload types, and ``ask_keyframe(ssrc)`` stands in for a PLI."""
        self._pt_kinds = dict(kinds)
        self._plain = True
        self._ask_keyframe = ask_keyframe

    def mark_connected(self) -> None:
        if self.t_connected is None:
            self.t_connected = time.monotonic()
            self.connected.set()

    def connection(self) -> Any:
        pc = self.pc
        if pc is None:
            return None
        dtls = pc.sctp.transport if pc.sctp is not None else None
        if dtls is None:
            for transceiver in pc.getTransceivers():
                if transceiver.receiver.transport is not None:
                    dtls = transceiver.receiver.transport
                    break
        if dtls is None:
            return None
        self.dtls = dtls
        return dtls.transport._connection

    def _kind(self, pt: int) -> str:
        if self._pt_kinds is None or (pt not in self._pt_kinds and not self._plain):
            kinds: dict[int, str] = {}
            description = self.pc.remoteDescription if self.pc is not None else None
            for m in re.finditer(r"a=rtpmap:(\d+) ([\w-]+)/", description.sdp if description else ""):
                name = m.group(2).lower()
                kinds[int(m.group(1))] = "video" if name in VIDEO_CODECS else "rtx" if name == "rtx" else "audio"
            self._pt_kinds = kinds
        return self._pt_kinds.get(pt, "other")

    def on_rtp(self, data: bytes) -> None:
        now = time.monotonic()
        b1 = data[1]
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        st = self.streams.get(ssrc)
        if st is None:
            st = self.streams[ssrc] = InStream(ssrc, self._kind(b1 & 0x7F), seq, self.participant.spec.probe)
        st.packets += 1
        st.bytes += len(data)
        d = (seq - st.last_seq) & 0xFFFF
        if d < 0x8000:
            st.highest += d
            st.last_seq = seq
        if st.kind == "video":
            if b1 & 0x80:
                st.frames += 1
                if st.arrivals is not None:
                    st.arrivals.append((ts, now))
                if st.first_frame is None and st.key_ts == ts:
                    st.first_frame = now
            if st.key_ts is None:
                self._look_for_keyframe(st, data, ts, now)

    def _look_for_keyframe(self, st: InStream, data: bytes, ts: int, now: float) -> None:
        from sfu.media.codecs.vp8 import is_keyframe_start

        if now - st.last_pli > PLI_INTERVAL:
            # like a browser that cannot decode yet: ask for a keyframe until one comes
            st.last_pli = now
            if self._ask_keyframe is not None:
                self._ask_keyframe(st.ssrc)
            else:
                receivers = self.pc.getReceivers() if self.pc is not None else []
                if receivers:
                    asyncio.ensure_future(receivers[0]._send_rtcp_pli(st.ssrc))
        if self._plain:
            plain = data
        else:
            srtp = getattr(self.dtls, "_rx_srtp", None)
            if srtp is None:
                return
            try:
                plain = srtp.unprotect(data)
            except Exception:
                return
        offset = 12 + 4 * (plain[0] & 0x0F)
        if plain[0] & 0x10 and len(plain) >= offset + 4:
            offset += 4 + 4 * int.from_bytes(plain[offset + 2 : offset + 4], "big")
        if is_keyframe_start(plain[offset:]):
            st.key_ts = ts
            if data[1] & 0x80:
                st.first_frame = now


class Participant:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.legs: list[Leg] = []
        self.sources: list[Any] = []
        self.error: str | None = None
        self.done = False
        self.handle: Any = None  # what the target client keeps (room, pcs, ids)

    def leg(self, role: str) -> Leg:
        leg = Leg(self, role)
        self.legs.append(leg)
        return leg

    def join_time(self) -> float | None:
        if not self.legs or self.legs[0].t_connected is None:
            return None
        return self.legs[0].t_connected - self.legs[0].t_start

    def first_frame_abs(self) -> float | None:
        """When the first complete video keyframe arrived (monotonic), on any stream."""
        times = [
            st.first_frame
            for leg in self.legs
            if leg.role != "publish"
            for st in leg.streams.values()
            if st.first_frame is not None
        ]
        return min(times) if times else None

    def subscribe_start(self) -> float | None:
        for leg in self.legs:
            if leg.role != "publish":
                return leg.t_start
        return None

    def publish_connected(self) -> float | None:
        if not self.spec.publish:
            return None
        for leg in self.legs:
            if leg.role != "subscribe":
                return leg.t_connected
        return None

    def has_video(self) -> bool:
        return any(st.kind == "video" and st.first_frame is not None for leg in self.legs for st in leg.streams.values())


# --- taking RTP off the socket -----------------------------------------------------------

_OWNERS: dict[Any, Leg] = {}
_UNBOUND: list[Leg] = []


def _resolve(connection: Any) -> Leg | None:
    for leg in list(_UNBOUND):
        c = leg.connection()
        if c is not None:
            _OWNERS[c] = leg
            _UNBOUND.remove(leg)
    return _OWNERS.get(connection)


def install_rtp_tap() -> None:
    """Route inbound RTP of registered peer connections to their Leg, before aioice and SRTP."""
    from aioice.ice import StunProtocol

    if getattr(StunProtocol, "_bench_tap", False):
        return
    original = StunProtocol.datagram_received

    def datagram_received(self: Any, data: bytes, addr: Any) -> None:
        if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
            leg = _OWNERS.get(self.receiver) or _resolve(self.receiver)
            if leg is not None:
                leg.on_rtp(data)
                return
        original(self, data, addr)

    StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]
    StunProtocol._bench_tap = True  # type: ignore[attr-defined]


# --- the worker ----------------------------------------------------------------------------


class Worker:
    def __init__(self, conn: Any, index: int) -> None:
        self.conn = conn
        self.index = index
        self.participants: list[Participant] = []
        self.client: Any = None
        self.clip: Any = None
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._readable)
        # the event loop made the pipe non-blocking; a reply larger than the pipe's buffer
        # (the collected logs) must be written whole, so keep it blocking (reads happen only
        # when it is readable)
        os.set_blocking(self.conn.fileno(), True)
        await self.stopping.wait()
        loop.remove_reader(self.conn.fileno())

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                rid, command, arg = self.conn.recv()
                task = asyncio.ensure_future(self._handle(rid, command, arg))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except EOFError:
            self.stopping.set()

    async def _handle(self, rid: int, command: str, arg: Any) -> None:
        try:
            result = await getattr(self, "cmd_" + command)(arg)
            reply = (rid, "ok", result)
        except Exception as exc:
            reply = (rid, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        try:
            self.conn.send(reply)
        except (BrokenPipeError, OSError):
            self.stopping.set()

    # --- commands -------------------------------------------------------------------------

    async def cmd_init(self, arg: dict[str, Any]) -> dict[str, Any]:
        from . import clients
        from .media import install_fast_sender, load_clip

        install_fast_sender()
        install_rtp_tap()
        batch = float(arg.get("batch_ms", 0)) / 1000
        if batch > 0:
            loop = asyncio.get_running_loop()

            def nap() -> None:
                # Block the loop briefly once per iteration, so that one epoll wake-up finds
                # many sockets ready instead of one: most of a counting peer's CPU goes to
                # wake-ups, not to packets. Adds up to ``batch`` s to arrival times, so it is
                # used only where no send or arrival time is measured.
                time.sleep(batch)
                loop.call_soon(nap)

            loop.call_soon(nap)
        self.clip = load_clip(Path(arg["clip"]))
        self.client = clients.make_client(arg["target"], self.clip)
        await self.client.start()
        return {"pid": os.getpid()}

    async def cmd_join(self, arg: dict[str, Any]) -> dict[str, Any]:
        phase: str = arg["phase"]
        specs: list[Spec] = arg.get("specs", [])
        for spec in specs:
            if not any(p.spec.index == spec.index for p in self.participants):
                self.participants.append(Participant(spec))
        start_at: dict[int, float] = arg.get("start_at", {})
        for p in self.participants:
            if p.spec.index in start_at:
                p.spec.start_at = start_at[p.spec.index]
        limit = asyncio.Semaphore(arg.get("concurrency", 6))
        todo = [p for p in self.participants if self.client.takes_part(p, phase)]

        async def one(p: Participant) -> None:
            if p.error is not None:
                return
            if p.spec.start_at is not None:
                await asyncio.sleep(max(0.0, p.spec.start_at - time.monotonic()))
                await self._join_one(p, phase)
                return
            async with limit:
                await self._join_one(p, phase)

        await asyncio.gather(*(one(p) for p in todo))
        return {"joined": sum(1 for p in todo if p.error is None), "failed": sum(1 for p in todo if p.error is not None)}

    async def _join_one(self, p: Participant, phase: str) -> None:
        try:
            await asyncio.wait_for(self.client.join(p, phase), JOIN_TIMEOUT)
        except Exception as exc:
            p.error = f"{phase}: {type(exc).__name__}: {exc}"[:300]
            logger.warning("participant %s failed: %s", p.spec.identity, p.error)
        p.done = True

    async def cmd_status(self, arg: Any) -> dict[str, Any]:
        subscribers = [p for p in self.participants if p.spec.subscribe]
        return {
            "participants": len(self.participants),
            "connected": sum(1 for p in self.participants if p.legs and all(leg.t_connected is not None for leg in p.legs)),
            "failed": sum(1 for p in self.participants if p.error is not None),
            "subscribers": len(subscribers),
            "with_video": sum(1 for p in subscribers if p.has_video()),
            "packets": sum(st.packets for p in self.participants for leg in p.legs for st in leg.streams.values()),
            "sent": sum(s.packets_sent for p in self.participants for s in p.sources),
            "pc_states": dict(Counter(leg.pc.connectionState for p in self.participants for leg in p.legs if leg.pc is not None)),
        }

    async def cmd_snapshot(self, arg: Any) -> dict[str, Any]:
        streams = {}
        for p in self.participants:
            for li, leg in enumerate(p.legs):
                for st in leg.streams.values():
                    streams[(p.spec.index, li, st.ssrc)] = (st.kind, st.packets, st.bytes, st.highest, st.frames)
        sources = {}
        for p in self.participants:
            for s in p.sources:
                sources[(p.spec.index, s.kind)] = (s.packets_sent, s.bytes_sent, s.frames_sent, s.keyframes_sent)
        return {"t": time.monotonic(), "streams": streams, "sources": sources}

    async def cmd_collect(self, arg: dict[str, Any]) -> dict[str, Any]:
        t0, t1 = arg["t0"], arg["t1"]
        participants = []
        for p in self.participants:
            probes = []
            for leg in p.legs:
                for st in leg.streams.values():
                    if st.arrivals is not None:
                        probes.append([(ts, t) for ts, t in st.arrivals if t0 <= t <= t1])
            sent = {}
            for s in p.sources:
                if s.kind == "video":
                    # sent up to 30 s before the window: frames that arrive early in it
                    sent = {"salt": s.salt, "log": [(ts, t) for ts, t in s.sent_log if t0 - 30.0 <= t <= t1]}
            participants.append(
                {
                    "index": p.spec.index,
                    "identity": p.spec.identity,
                    "room": p.spec.room,
                    "publish": p.spec.publish,
                    "subscribe": p.spec.subscribe,
                    "probe": p.spec.probe,
                    "error": p.error,
                    "join": p.join_time(),
                    "first_frame_abs": p.first_frame_abs(),
                    "subscribe_start": p.subscribe_start(),
                    "publish_connected": p.publish_connected(),
                    "has_video": p.has_video(),
                    "probes": probes,
                    "sent": sent,
                }
            )
        return {"participants": participants}

    async def cmd_close(self, arg: Any) -> None:
        async def leave(p: Participant) -> None:
            for s in p.sources:
                s.stop()
            try:
                await asyncio.wait_for(self.client.leave(p), 10)
            except Exception:
                pass

        await asyncio.gather(*(leave(p) for p in self.participants))
        try:
            await asyncio.wait_for(self.client.stop(), 10)
        except Exception:
            pass
        asyncio.get_running_loop().call_later(0.05, self.stopping.set)


def worker_main(conn: Any, index: int, cpus: list[int] | None, log_level: str) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s w{index} %(levelname)s %(name)s: %(message)s")
    for name in ("aioice", "aiortc", "aiohttp"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if cpus:
        os.sched_setaffinity(0, cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(Worker(conn, index).run())


@dataclass
class WorkerHandle:
    process: Any
    conn: Any
    index: int
    pid: int = 0
    next_id: int = 0
    replies: dict[int, Any] = field(default_factory=dict)

    def send(self, command: str, arg: Any = None) -> int:
        self.next_id += 1
        self.conn.send((self.next_id, command, arg))
        return self.next_id

    def poll(self) -> None:
        while self.conn.poll():
            rid, status, result = self.conn.recv()
            self.replies[rid] = (status, result)

    def reply(self, rid: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while rid not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker {self.index} did not answer in {timeout:.0f}s")
            if not self.process.is_alive() and not self.conn.poll():
                raise RuntimeError(f"worker {self.index} exited ({self.process.exitcode})")
            if self.conn.poll(min(left, 0.5)):
                self.poll()
        status, result = self.replies.pop(rid)
        if status != "ok":
            raise RuntimeError(f"worker {self.index}: {result}")
        return result

    def call(self, command: str, arg: Any = None, timeout: float = 60.0) -> Any:
        return self.reply(self.send(command, arg), timeout)


class WorkerPool:
    """``count`` worker processes, pinned to ``cpus`` (the cores the server does not use)."""

    def __init__(self, count: int, cpus: list[int] | None, log_level: str = "WARNING") -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.workers: list[WorkerHandle] = []
        for i in range(count):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(child, i, cpus, log_level), daemon=True, name=f"bench-peer-{i}")
            process.start()
            child.close()
            self.workers.append(WorkerHandle(process, parent, i))

    def call_all(self, command: str, args: list[Any] | Any = None, timeout: float = 60.0) -> list[Any]:
        per = args if isinstance(args, list) else [args] * len(self.workers)
        ids = [w.send(command, a) for w, a in zip(self.workers, per)]
        return [w.reply(rid, timeout) for w, rid in zip(self.workers, ids)]

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    def close(self, timeout: float = 20.0) -> None:
        for w in self.workers:
            if w.process.is_alive():
                try:
                    w.send("close")
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.process.join(max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
