"""A media worker process: hosts one in-process media plane behind the framed channel.

``python -m sfu.workers.worker --fd N --spec JSON`` is started by the front's ``WorkerPool``
with a clean interpreter. It owns the peer connections, DTLS/SRTP and forwarding of the rooms
the front places on it, on its own UDP port, and exits when the front's channel closes.

``WorkerHost`` maps the front's ids (transports ``t…``, handles ``h…``) to the plane's
objects, carries out the front's calls in order, forwards ``TransportListener`` events as
notifications and sends the handles' counters and the plane's figures once a second.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any, cast

from ..contracts import (
    BandwidthProfile,
    MediaPlane,
    NegotiationError,
    Offer,
    ParticipantTransport,
    TrackSink,
    TrackSource,
)
from ..media.pipe import PipeHub
from ..media.producer import Producer
from ..media.router import Router
from .channel import Channel, ProtocolError, RequestError

if TYPE_CHECKING:
    from ..media.peer import MediaConfig

logger = logging.getLogger("sfu.workers.worker")  # (also when run as __main__)

STATS_INTERVAL = 1.0  # seconds between two stats notifications
STATS_ROWS_PER_FRAME = 4096  # handles' counters per stats frame (~70 bytes each: well under MAX_FRAME)
PlaneFactory = Callable[[dict[str, Any]], MediaPlane]  # (spec) -> an unstarted plane


def counters_row(handle: TrackSource | TrackSink) -> list[int]:
    c = handle.counters
    return [c.packets, c.octets, c.lost, c.retransmitted, c.nacks, c.plis]


class _Listener:
    """One transport's ``TransportListener``: every event becomes a notification."""

    def __init__(self, host: WorkerHost, transport_id: str) -> None:
        self.host = host
        self.tid = transport_id

    def _send(self, event: str, **data: Any) -> None:
        self.host.channel.notify(event, {"t": self.tid, **data})

    def on_offer(self, offer: Offer) -> None:
        sections = [asdict(section) for section in offer.sections]
        self._send("offer", sdp=offer.sdp, revision=offer.revision, sections=sections)

    def on_publication_ready(self, source: TrackSource) -> None:
        # (a simulcast track's RIDs, low to high: a worker it is piped to makes the same layers)
        layers = getattr(source, "layers", None) or ()
        rids = [layer.rid for layer in layers] if len(layers) > 1 else []
        self._send("publication_ready", h=self.host.id_of(source), rids=rids)

    def on_publication_failed(self, source: TrackSource, reason: str) -> None:
        self._send("publication_failed", h=self.host.id_of(source), reason=reason)

    def on_publication_closed(self, source: TrackSource) -> None:
        self._send("publication_closed", h=self.host.id_of(source))

    def on_subscription_failed(self, sink: TrackSink, reason: str) -> None:
        self._send("subscription_failed", h=self.host.id_of(sink), reason=reason)

    def on_subscription_lost(self, sink: TrackSink) -> None:
        self._send("subscription_lost", h=self.host.id_of(sink))

    def on_data_channel(self, label: str) -> None:
        # The front must know the channel's options when the room publishes a track on it
        # (at once, from this event): a transport that can tell them (``channel_options``) does.
        transport = self.host.transports.get(self.tid)
        find = getattr(transport, "channel_options", None)
        options = find(label) if callable(find) else None
        self._send("data_channel", label=label, options=asdict(options) if options is not None else None)

    def on_sink_switched(self, sink: TrackSink, switched_off: bool, reason: str | None) -> None:
        self._send("sink_switched", h=self.host.id_of(sink), off=switched_off, reason=reason)

    def on_sink_layer(self, sink: TrackSink, layer: int) -> None:
        self._send("sink_layer", h=self.host.id_of(sink), layer=layer)

    def on_failed(self, code: int, reason: str) -> None:
        self._send("failed", code=code, reason=reason)

    def on_audio_activity(self, source: TrackSource, level: float) -> None:
        self._send("audio_activity", h=self.host.id_of(source), level=level)

    def on_network_quality(self, level: int, stats: dict[str, Any]) -> None:
        self._send("network_quality", level=level, stats=stats)


class WorkerHost:
    """Carries out the front's requests on ``plane`` (see the module docstring)."""

    def __init__(self, plane: MediaPlane, index: int) -> None:
        self.plane = plane
        self.index = index
        self.channel: Channel  # set by serve()
        self.transports: dict[str, ParticipantTransport] = {}
        self.handles: dict[str, TrackSource | TrackSink] = {}
        self._ids: dict[int, str] = {}  # id(handle) -> its front id
        self._sent: dict[str, list[int]] = {}  # the counters last sent per handle
        # The front's methods: data -> result, or an awaitable of it (RequestError for an error
        # answer). More may be added (e.g. the worker-to-worker pipe's ends).
        self.methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "create_transport": self._create_transport,
            "publish": self._publish,
            "publish_data": self._publish_data,
            "unpublish": lambda d: self._transport(d).unpublish(self._source(d["h"])),
            "subscribe": self._subscribe,
            "unsubscribe": lambda d: self._transport(d).unsubscribe(self._drop_sink(d["h"])),
            "release": lambda d: self._transport(d).release(self._drop_sink(d["h"])),
            "set_priority": lambda d: self._sink(d["h"]).set_priority(d["priority"]),
            # Issue 12's allocation: the subscriber's bandwidth profile and per-sink hints.
            "set_bandwidth_profile": lambda d: self._transport(d).set_bandwidth_profile(BandwidthProfile(**d["profile"])),
            "set_sink_hints": lambda d: self._transport(d).set_sink_hints(
                self._sink(d["h"]), tuple(d["render"]) if d["render"] else None, bool(d["off"])  # type: ignore[arg-type]
            ),
            "request_negotiation": lambda d: self._transport(d).request_negotiation(),
            "set_dominant_speaker": lambda d: self._transport(d).set_dominant_speaker(frozenset(d["tracks"])),
            "apply_answer": self._apply_answer,
            "apply_offer": self._apply_offer,
            "add_ice_candidate": self._add_ice_candidate,
            "close_transport": self._close_transport,
            "room_closed": lambda d: self.plane.room_closed(d["room"]),
            "stats": lambda d: self.stats(full=True),
            # a room on several workers (sfu.media.pipe): tracks piped between this and ``peer``
            "pipe_listen": lambda d: self.pipes.listen(d["peer"], d["name"]),
            "pipe_connect": lambda d: self.pipes.connect(d["peer"], d["name"]),
            "pipe_out": self._pipe_out,
            "pipe_in": lambda d: self.bind(d["h"], self.pipes.expect(d["peer"], d["track_sid"], d["kind"], d.get("rids"))),
        }
        self.pipes = PipeHub(on_close=self._pipe_closed)

    async def serve(self, sock: socket.socket) -> None:
        """Answer the front until it closes the channel."""
        self.channel = await Channel.over_socket(sock, f"worker {self.index}", on_request=self.handle)
        try:
            await self.plane.start()
        except Exception as exc:  # e.g. the UDP port is taken: the front reports it
            logger.error("cannot start the media plane: %s", exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.channel.notify("start_failed", {"reason": f"media worker {self.index}: {reason}"})
            await self.channel.drain()
            self.channel.close()
            return
        ticker = asyncio.ensure_future(self._tick())
        try:
            self.channel.notify("ready", self.figures())
            await self.channel.run()
        except ProtocolError as exc:
            logger.error("the front broke the channel protocol: %s", exc)
        finally:
            ticker.cancel()
            self.pipes.close()
            for transport in list(self.transports.values()):
                await transport.close()
            await self.plane.close()

    def handle(self, method: str, data: Any) -> Any:
        handler = self.methods.get(method)
        if handler is None:
            raise RequestError(53000, f"unknown method {method!r}")
        if not isinstance(data, dict):
            raise RequestError(53000, f"{method}: data must be an object")
        try:
            return handler(data)
        except KeyError as exc:
            raise RequestError(53000, f"{method}: unknown or missing {exc}") from None

    # --- ids -------------------------------------------------------------------------------

    def id_of(self, handle: TrackSource | TrackSink) -> str:
        return self._ids.get(id(handle), "")

    def bind(self, handle_id: str, handle: TrackSource | TrackSink) -> None:
        """Know ``handle`` by the front's id (its counters then go out with the stats)."""
        self.handles[handle_id] = handle
        self._ids[id(handle)] = handle_id

    def _forget(self, handle_id: str) -> TrackSource | TrackSink:
        handle = self.handles.pop(handle_id)
        self._ids.pop(id(handle), None)
        self._sent.pop(handle_id, None)
        return handle

    def _transport(self, data: dict[str, Any]) -> ParticipantTransport:
        return self.transports[data["t"]]

    def _source(self, handle_id: str) -> TrackSource:
        return cast(TrackSource, self.handles[handle_id])

    def _sink(self, handle_id: str) -> TrackSink:
        return cast(TrackSink, self.handles[handle_id])

    def _drop_sink(self, handle_id: str) -> TrackSink:
        sink = self._sink(handle_id)
        self._forget(handle_id)
        return sink

    # --- requests --------------------------------------------------------------------------

    def _create_transport(self, d: dict[str, Any]) -> None:
        tid = d["t"]
        self.transports[tid] = self.plane.create_transport(d["room"], d["name"], _Listener(self, tid), bool(d.get("offers_first")))

    def _publish(self, d: dict[str, Any]) -> None:
        source = self._transport(d).publish(d["track_sid"], d["kind"], d.get("codecs"), d.get("client_track_id"))
        self.bind(d["h"], source)

    def _publish_data(self, d: dict[str, Any]) -> dict[str, Any] | None:
        source = self._transport(d).publish_data(d["track_sid"], d["label"])
        if source is None:
            return None
        self.bind(d["h"], source)
        options = source.data_options
        return None if options is None else asdict(options)

    def _subscribe(self, d: dict[str, Any]) -> None:
        sink = self._transport(d).subscribe(self._source(d["source"]), d["stream_id"], d.get("priority", "standard"))
        self.bind(d["h"], sink)

    async def _apply_answer(self, d: dict[str, Any]) -> bool:
        transport = self._transport(d)
        try:
            await transport.apply_answer(d["sdp"], d["revision"])
        except NegotiationError as exc:
            raise RequestError(exc.code, exc.message) from None
        return transport.negotiating

    async def _apply_offer(self, d: dict[str, Any]) -> str:
        try:
            return await self._transport(d).apply_offer(d["sdp"], d["revision"])
        except NegotiationError as exc:
            raise RequestError(exc.code, exc.message) from None

    async def _add_ice_candidate(self, d: dict[str, Any]) -> None:
        try:
            await self._transport(d).add_ice_candidate(d.get("candidate"), d.get("sdp_mid"), d.get("sdp_mline_index"))
        except NegotiationError as exc:
            raise RequestError(exc.code, exc.message) from None

    async def _close_transport(self, d: dict[str, Any]) -> None:
        transport = self.transports.pop(d["t"], None)
        for handle_id in d.get("handles", []):
            if handle_id in self.handles:
                self._forget(handle_id)
        if transport is not None:
            await transport.close()

    # --- pipes between workers ---------------------------------------------------------------

    def _pipe_out(self, d: dict[str, Any]) -> None:
        """Send a source of this worker's room ``room`` to worker ``peer``, once."""
        source = self._source(d["h"])
        router_of = getattr(self.plane, "router", None)  # (LocalMediaPlane's rooms' Routers)
        if not isinstance(source, Producer) or not callable(router_of):
            raise RequestError(53000, f"pipe_out: {source!r} cannot be piped from this media plane")
        router: Router = router_of(d["room"])
        self.pipes.send(d["peer"], source, router)

    def _pipe_closed(self, peer: int, producer: Producer) -> None:
        """A piped track ended (unpublished, or the other worker is gone): its consumers here
        leave every room's fan-out, and the front's handle for it is forgotten."""
        routers: dict[str, Router] = getattr(self.plane, "routers", {})
        for router in routers.values():
            if router.consumers(producer):
                router.remove_source(producer)
        handle_id = self._ids.get(id(producer))
        if handle_id is not None:
            self._forget(handle_id)

    # --- statistics ------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The plane's figures (summed, should it report several) and this process's pid."""
        own = self.plane.figures()
        extra: dict[str, float] = {}
        for figures in own:
            extra.update(figures.extra)
        if self.pipes.pipes:
            pipes = self.pipes.counters()
            extra.update(pipe_packets_sent=pipes.sent, pipe_packets_received=pipes.received, pipe_dropped=pipes.dropped,
                         pipe_retransmitted=pipes.retransmitted)
        return {
            "pid": os.getpid(),
            "rooms": sum(f.rooms for f in own),
            "transports": sum(f.transports for f in own),
            "packets_in": sum(f.packets_in for f in own),
            "packets_out": sum(f.packets_out for f in own),
            "udp_port": next((f.udp_port for f in own if f.udp_port is not None), None),
            "extra": extra,
        }

    def stats(self, full: bool = False) -> dict[str, Any]:
        """The counters that changed since the last stats (all of them if ``full``)."""
        changed: dict[str, list[int]] = {}
        for handle_id, handle in self.handles.items():
            row = counters_row(handle)
            if full or self._sent.get(handle_id) != row:
                changed[handle_id] = self._sent[handle_id] = row
        return {"handles": changed, "figures": self.figures()}

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                stats = self.stats()
                rows = list(stats["handles"].items())
                # Frames are bounded: many handles' counters go in several (the last has the figures).
                while len(rows) > STATS_ROWS_PER_FRAME:
                    self.channel.notify("stats", {"handles": dict(rows[:STATS_ROWS_PER_FRAME])})
                    del rows[:STATS_ROWS_PER_FRAME]
                self.channel.notify("stats", {"handles": dict(rows), "figures": stats["figures"]})
            except Exception:  # never let statistics end the worker
                logger.exception("stats failed")


# --- the process -------------------------------------------------------------------------------


def media_spec(config: MediaConfig) -> dict[str, Any]:
    """``config`` as JSON for a worker's command line (all but the mux, which each worker opens)."""
    spec = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("udp_mux", "ice_servers")}
    spec["ice_servers"] = [
        {"urls": s.urls, "username": s.username, "credential": s.credential} for s in config.ice_servers
    ]
    return spec


def local_plane(spec: dict[str, Any]) -> MediaPlane:
    """The in-process media plane of ``sfu.media`` on this worker's UDP port (``media_spec`` plus
    ``udp_port`` and ``udp_host``)."""
    from aiortc import RTCIceServer

    from ..media.peer import MediaConfig
    from ..media.plane import LocalMediaPlane

    spec = dict(spec)
    port, host, index = spec.pop("udp_port", 0), spec.pop("udp_host", None), spec.pop("worker", None)
    servers = [RTCIceServer(**server) for server in spec.pop("ice_servers", [])]
    return LocalMediaPlane(MediaConfig(ice_servers=servers, **spec), udp_port=port, udp_host=host, worker=index)


def _factory(path: str) -> PlaneFactory:
    module, _, name = path.partition(":")
    factory: PlaneFactory = getattr(importlib.import_module(module), name)
    return factory


class LineFormatter(logging.Formatter):
    """One JSON object per line on stderr, which the front reads and logs in its own format
    (``pool.relay_log``): time, level, logger, message (with any traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return json.dumps({"t": record.created, "level": record.levelno, "logger": record.name, "message": message})


def die_with_parent() -> None:
    """Linux: be killed the moment the front dies (a front killed with SIGKILL leaves no worker
    holding its UDP port while a new server starts). Elsewhere the channel's EOF ends us."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the front died before prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sfu-worker", description="an SFU media worker (started by `sfu serve`)")
    p.add_argument("--fd", type=int, required=True, help="the channel's unix socket, inherited from the front")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--spec", default="{}", help="JSON: the media settings and udp_port/udp_host")
    p.add_argument("--plane", default="sfu.workers.worker:local_plane", help="module:factory(spec) -> MediaPlane")
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    die_with_parent()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    sock = socket.socket(fileno=args.fd)
    plane = _factory(args.plane)(json.loads(args.spec))
    host = WorkerHost(plane, args.index)
    if args.uvloop:
        import uvloop

        uvloop.run(host.serve(sock))
    else:
        asyncio.run(host.serve(sock))
    logger.info("the front closed the channel: exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
