"""The front side of the media workers: ``RemoteMediaPlane`` (a ``sfu.contracts.MediaPlane``)
over a pool of worker processes, one per core, like mediasoup's workers.

* Each ``Worker`` is a child process (``python -m sfu.workers.worker``, a clean interpreter)
  with a unix socket channel, its own UDP port (``udp_port + index``; 0 lets each one choose)
  and the transports the front placed on it.
* Placement: a room goes to the least-loaded live worker when its first transport is
  created (load: transports, plus forwarded packets per second in units of what one
  participant makes); its transports follow it, up to ``room_capacity`` on that worker
  (None: no limit). Past it, a room bigger than one worker spills onto the others
  (``transport_worker``), and a subscription to a source on another worker goes through a
  pipe between the two (``source_on`` -> ``pipe_source``, mediasoup's ``pipeToRouter``,
  sfu.media.pipe): the source's worker sends its packets once to each worker that has
  subscribers of it.
* Crash isolation: when a worker's channel ends (the process died, or it broke the protocol
  and was killed), every transport it carried reports ``on_failed(53405, ...)`` to the room
  model, its rooms are unplaced (so the same room name starts afresh on a live worker), and a
  replacement starts on the same index and port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..contracts import PlaneFigures, TransportListener
from .channel import Channel, ProtocolError
from .remote import WORKER_DIED, RemoteHandle, RemoteSource, RemoteTransport

logger = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds a worker has to report ready
STOP_TIMEOUT = 5.0  # seconds a worker has to exit once its channel is closed
PACKETS_PER_PARTICIPANT = 500.0  # forwarded packets/s that weigh as much as one transport in placement
MAX_RESTART_DELAY = 30.0

# pipe(source, worker) -> a source on ``worker`` fed by ``source`` (mediasoup's pipeToRouter).
Pipe = Callable[[RemoteSource, "Worker"], RemoteSource]


class WorkerStartError(Exception):
    """A worker process could not start (its reason, e.g. its UDP port is taken)."""


@dataclass
class WorkerSpec:
    """What every worker is started with."""

    media: dict[str, Any] = field(default_factory=dict)  # JSON: the media settings (plane_from_spec)
    udp_port: int = 0  # worker i binds udp_port + i (0: each lets the OS choose)
    udp_host: str | None = None
    plane: str = "sfu.workers.worker:local_plane"  # module:factory the worker builds its plane with
    log_level: str = "INFO"
    python: str = sys.executable

    def for_worker(self, index: int) -> dict[str, Any]:
        port = self.udp_port + index if self.udp_port else 0
        return {**self.media, "udp_port": port, "udp_host": self.udp_host, "worker": index}


class Worker:
    """One worker process as the front sees it (restarted in place after a crash)."""

    def __init__(self, plane: RemoteMediaPlane, index: int) -> None:
        self.plane = plane
        self.index = index
        self.alive = False
        self.restarts = 0
        self.pid = 0
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel
        self.transports: dict[str, RemoteTransport] = {}
        self.handles: dict[str, RemoteHandle] = {}  # every live source and sink on the worker, by id
        self.rooms: set[str] = set()
        self.figures: dict[str, Any] = {}
        self.rate = 0.0  # forwarded packets per second, from the last two stats
        self._last: tuple[float, int] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._logs: asyncio.Future[None] | None = None

    @property
    def load(self) -> float:
        return len(self.transports) + self.rate / PACKETS_PER_PARTICIPANT

    @property
    def udp_port(self) -> int | None:
        port = self.figures.get("udp_port")
        return port if isinstance(port, int) else None

    async def start(self) -> None:
        """Start the process and wait until it reports ready (raises WorkerStartError)."""
        spec = self.plane.spec
        front, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [
            "-m", "sfu.workers.worker", "--fd", str(child.fileno()), "--index", str(self.index),
            "--spec", json.dumps(spec.for_worker(self.index)), "--plane", spec.plane, "--log-level", spec.log_level,
        ]  # fmt: skip
        if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
            args.append("--uvloop")
        try:
            self.process = await asyncio.create_subprocess_exec(
                spec.python, *args, pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        finally:
            child.close()
        self.pid = self.process.pid
        assert self.process.stderr is not None
        self._logs = asyncio.ensure_future(relay_log(self.process.stderr, self.index, self.pid))
        self.channel = await Channel.over_socket(front, f"worker {self.index}", on_event=self._on_event)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())
        try:
            figures = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except asyncio.TimeoutError:
            self.kill()
            raise WorkerStartError(f"media worker {self.index} did not start within {START_TIMEOUT:.0f} s") from None
        self.figures = figures
        self.alive = True
        logger.info("media worker %d started (pid %d, UDP port %s)", self.index, self.pid, self.udp_port)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass

    async def _read(self) -> None:
        try:
            await self.channel.run()
        except ProtocolError as exc:
            logger.error("media worker %d broke the channel protocol (%s): killing it", self.index, exc)
            self.kill()
        except Exception:
            logger.exception("media worker %d: channel failed: killing it", self.index)
            self.kill()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(WorkerStartError(f"media worker {self.index} exited before it was ready (see its log)"))
        self.plane._lost(self)

    def _on_event(self, event: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{event}: data must be an object")
        if event == "stats":
            self._apply_stats(data)
        elif event == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(data)
        elif event == "start_failed":
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(WorkerStartError(str(data.get("reason"))))
        else:
            transport = self.transports.get(data.get("t", ""))
            if transport is not None:
                transport.dispatch(event, data)

    def _apply_stats(self, data: dict[str, Any]) -> None:
        rows = data.get("handles")
        if not isinstance(rows, dict):
            raise ProtocolError("stats without handles")
        for handle_id, row in rows.items():
            handle = self.handles.get(handle_id)
            if handle is not None:
                handle.update(row)
        figures = data.get("figures")
        if isinstance(figures, dict):
            self.figures = figures
            now, out = time.monotonic(), int(figures.get("packets_out", 0))
            if self._last is not None and now > self._last[0]:
                self.rate = max(0.0, (out - self._last[1]) / (now - self._last[0]))
            self._last = (now, out)

    def plane_figures(self) -> PlaneFigures:
        f = self.figures
        extra = {k: float(v) for k, v in f.get("extra", {}).items() if isinstance(v, (int, float))}
        return PlaneFigures(
            worker=self.index, pid=self.pid, alive=self.alive, rooms=len(self.rooms), transports=len(self.transports),
            packets_in=int(f.get("packets_in", 0)), packets_out=int(f.get("packets_out", 0)), udp_port=self.udp_port,
            restarts=self.restarts, extra=extra,
        )  # fmt: skip

    async def stop(self) -> None:
        """Close the channel (the worker exits) and wait for the process."""
        self.alive = False
        self.channel.close()
        if self.process is None:
            return
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("media worker %d did not exit within %.0f s: killing it", self.index, STOP_TIMEOUT)
            self.kill()
            await self.process.wait()
        if self._logs is not None:  # (its last lines)
            await asyncio.wait([self._logs], timeout=1.0)


class RemoteMediaPlane:
    """A ``MediaPlane`` whose transports live in ``count`` worker processes."""

    def __init__(self, count: int, spec: WorkerSpec, room_capacity: int | None = None) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.spec = spec
        self.workers = [Worker(self, index) for index in range(count)]
        self.placement: dict[str, Worker] = {}  # room SID -> the worker that hosts it
        self.room_capacity = room_capacity  # transports of one room a worker takes before it spills
        self.pipe: Pipe | None = self.pipe_source
        self._pipes: set[tuple[int, int, int, int]] = set()  # (worker, pid, worker, pid) with a pipe up
        # (source id, worker, pid) -> (the source, its proxy on that worker)
        self._piped: dict[tuple[str, int, int], tuple[RemoteSource, RemoteSource]] = {}
        self._token = f"{os.getpid()}-{id(self):x}"
        self.closing = False
        self._restarts: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            await asyncio.gather(*(worker.start() for worker in self.workers))
        except BaseException:
            await self.close()
            raise

    # --- placement -----------------------------------------------------------------------------

    def room_worker(self, room_sid: str) -> Worker:
        """The worker hosting ``room_sid``; the least-loaded live one when it has none yet."""
        worker = self.placement.get(room_sid)
        if worker is None or not worker.alive:
            candidates = [w for w in self.workers if w.alive] or self.workers
            worker = min(candidates, key=lambda w: (w.load, len(w.rooms), w.index))
            self.placement[room_sid] = worker
            worker.rooms.add(room_sid)
            logger.info("room %s placed on media worker %d", room_sid, worker.index)
        return worker

    def transport_worker(self, room_sid: str, name: str) -> Worker:
        """Where a new transport of ``room_sid`` goes: the room's worker while it has fewer
        than ``room_capacity`` of the room's transports; then another live worker under
        that count (the least loaded), or the least loaded of all when each is full."""
        home = self.room_worker(room_sid)
        others = [w for w in self.workers if w.alive and w is not home]
        if self.room_capacity is None or not others or self._room_transports(home, room_sid) < self.room_capacity:
            return home
        roomy = [w for w in others if self._room_transports(w, room_sid) < self.room_capacity]
        worker = min(roomy or [home, *others], key=lambda w: (w.load, w.index))
        if worker is not home:
            logger.info("room %s: transport %s on media worker %d (worker %d has %d of the room's transports)",
                        room_sid, name, worker.index, home.index, self._room_transports(home, room_sid))  # fmt: skip
        return worker

    @staticmethod
    def _room_transports(worker: Worker, room_sid: str) -> int:
        return sum(1 for t in worker.transports.values() if t.room_sid == room_sid)

    def source_on(self, source: RemoteSource, worker: Worker) -> RemoteSource:
        """``source`` as seen from ``worker``: itself on its own worker, else through a pipe."""
        if source.worker is worker:
            return source
        if self.pipe is None:
            raise RuntimeError(f"{source.track_sid} is on worker {source.worker.index}, not {worker.index}, and no pipe is set")
        return self.pipe(source, worker)

    def pipe_source(self, source: RemoteSource, worker: Worker) -> RemoteSource:
        """A proxy on ``worker`` of ``source`` (on another worker), fed through the pipe between
        the two: made once per (source, worker); the pipe itself once per pair of workers."""
        key = (source.id, worker.index, worker.pid)
        known = self._piped.get(key)
        if known is not None:
            return known[1]
        self._forget_gone_sources()
        origin, room_sid = source.worker, source.transport.room_sid if source.transport is not None else ""
        piped = RemoteSource(worker, None, source.track_sid, source.kind, source.data_options)
        worker.handles[piped.id] = piped  # (its counters come with the far worker's stats)
        self._piped[key] = (source, piped)
        if source.kind == "data":  # (the pipe carries RTP only: a subscription there gets nothing)
            logger.warning("track %s: data tracks do not cross media workers", source.track_sid)
            return piped
        pair = (origin.index, origin.pid, worker.index, worker.pid)
        if pair not in self._pipes:
            self._pipes.update({pair, (worker.index, worker.pid, origin.index, origin.pid)})
            from ..media.pipe import PipeHub

            name = PipeHub.pipe_name(f"{self._token}-{origin.pid}-{worker.pid}", origin.index, worker.index)
            worker.channel.request("pipe_listen", {"peer": origin.index, "name": name}).add_done_callback(_quiet)
            origin.channel.request("pipe_connect", {"peer": worker.index, "name": name}).add_done_callback(_quiet)
        # in this order on each channel: the far worker has the proxy before any subscribe to it
        # (with a simulcast track's RIDs: the far producer has its layers before any consumer)
        piped.rids = list(source.rids)
        worker.channel.request("pipe_in", {"peer": origin.index, "h": piped.id, "track_sid": source.track_sid,
                                           "kind": source.kind, "rids": source.rids}).add_done_callback(_quiet)
        origin.channel.request("pipe_out", {"peer": worker.index, "h": source.id, "room": room_sid}).add_done_callback(_quiet)
        logger.info("track %s piped from media worker %d to %d", source.track_sid, origin.index, worker.index)
        return piped

    def _forget_gone_sources(self) -> None:
        """Proxies of sources unpublished since, or of workers replaced (their workers forgot
        them when the piped track closed)."""
        for key, (source, piped) in list(self._piped.items()):
            far = self.workers[key[1]]
            if source.id not in source.worker.handles or far.pid != key[2] or not far.alive:
                del self._piped[key]
                far.handles.pop(piped.id, None)

    # --- MediaPlane ----------------------------------------------------------------------------

    def create_transport(self, room_sid: str, name: str, listener: TransportListener, offers_first: bool = False) -> RemoteTransport:
        return self.create_transport_on(self.transport_worker(room_sid, name), room_sid, name, listener, offers_first)

    def create_transport_on(
        self, worker: Worker, room_sid: str, name: str, listener: TransportListener, offers_first: bool = False
    ) -> RemoteTransport:
        """A transport on a chosen worker."""
        transport = RemoteTransport(worker, room_sid, name, listener, offers_first)
        worker.transports[transport.id] = transport
        worker.rooms.add(room_sid)
        if not worker.alive:  # (between a crash and the replacement, with no live worker left)
            asyncio.get_running_loop().call_soon(transport.lost, WORKER_DIED, "Media connection failed: no media worker")
        return transport

    def room_closed(self, room_sid: str) -> None:
        self.placement.pop(room_sid, None)
        for worker in self.workers:
            if room_sid in worker.rooms:
                worker.rooms.discard(room_sid)
                if worker.alive:
                    worker.channel.request("room_closed", {"room": room_sid}).add_done_callback(_quiet)

    def figures(self) -> list[PlaneFigures]:
        return [worker.plane_figures() for worker in self.workers]

    async def close(self) -> None:
        self.closing = True
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*(worker.stop() for worker in self.workers if worker.process is not None))

    # --- crashes -------------------------------------------------------------------------------

    def _lost(self, worker: Worker) -> None:
        was_alive, worker.alive = worker.alive, False
        worker.channel.close()
        if self.closing or not was_alive:
            return
        code = worker.process.returncode if worker.process is not None else None
        transports = list(worker.transports.values())
        logger.error("media worker %d (pid %d) exited (%s): %d transport(s) of %d room(s) failed",
                     worker.index, worker.pid, code, len(transports), len(worker.rooms))  # fmt: skip
        for room_sid in worker.rooms:
            if self.placement.get(room_sid) is worker:
                del self.placement[room_sid]
        worker.rooms.clear()
        worker.transports.clear()
        worker.handles.clear()
        worker.rate, worker._last = 0.0, None
        for transport in transports:
            transport.lost(WORKER_DIED, f"Media connection failed: media worker {worker.index} exited")
        task = asyncio.ensure_future(self._replace(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _replace(self, worker: Worker) -> None:
        if worker.process is not None:
            await worker.process.wait()
        delay = 0.5
        while not self.closing:
            worker.restarts += 1
            try:
                await worker.start()
                return
            except WorkerStartError as exc:
                logger.error("replacement of media worker %d failed: %s (again in %.1f s)", worker.index, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)


async def relay_log(stream: asyncio.StreamReader, index: int, pid: int) -> None:
    """Log a worker's stderr lines (``worker.LineFormatter``) through this process's logging,
    so they take its format and levels; a line that is not one (a crash before logging was
    set up) is logged as a warning as it is."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        try:
            entry = json.loads(text)
            name, level, message, created = entry["logger"], int(entry["level"]), str(entry["message"]), float(entry["t"])
        except (ValueError, KeyError, TypeError):
            name, level, message, created = __name__, logging.WARNING, text, time.time()
        target = logging.getLogger(name)
        if target.isEnabledFor(level):
            record = target.makeRecord(name, level, "", 0, "worker %d [%d]: %s", (index, pid, message), None)
            record.created, record.msecs = created, (created % 1) * 1000
            target.handle(record)


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
