"""Baseline: the "Python SFU" pattern, an aiortc server that relays with MediaRelay.

Each published track is received by aiortc (depacketized and decoded once); every
subscriber gets ``MediaRelay().subscribe(track)``, and aiortc encodes and packetizes the
frames again for that subscriber. This is what the Python "SFU" examples we could find do;
the benchmark runs it to show what forwarding RTP without decoding buys.

Signaling is deliberately trivial (JSON over HTTP, loopback only):

* ``POST /publish {room, identity, sdp}`` -> ``{sdp}``: the publisher's offer, our answer.
* ``POST /subscribe {room, identity}`` -> ``{id, sdp}``: an offer carrying every other
  publisher's tracks in the room; ``POST /answer {id, sdp}`` completes it.
* ``GET /healthz``.

    python -m benchmarks.baselines.relay --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import uuid

from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.rtcconfiguration import RTCBundlePolicy

logger = logging.getLogger("relay")


class RelayServer:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.rooms: dict[str, dict[str, list[MediaStreamTrack]]] = {}
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.drains: list[asyncio.Task[None]] = []

    def _pc(self) -> tuple[str, RTCPeerConnection]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        pc_id = uuid.uuid4().hex
        self.pcs[pc_id] = pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.pcs.pop(pc_id, None)
                await pc.close()

        return pc_id, pc

    async def publish(self, request: web.Request) -> web.Response:
        body = await request.json()
        _, pc = self._pc()
        tracks: list[MediaStreamTrack] = []
        self.rooms.setdefault(body["room"], {})[body["identity"]] = tracks

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tracks.append(track)
            # keep the decoder's output queue drained while nobody subscribes yet
            self.drains.append(asyncio.ensure_future(_drain(self.relay.subscribe(track, buffered=False))))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp})

    async def subscribe(self, request: web.Request) -> web.Response:
        body = await request.json()
        room = self.rooms.get(body["room"], {})
        pc_id, pc = self._pc()
        count = 0
        for identity, tracks in room.items():
            if identity == body["identity"]:
                continue
            for track in tracks:
                pc.addTrack(self.relay.subscribe(track))
                count += 1
        if not count:
            await pc.close()
            self.pcs.pop(pc_id, None)
            return web.json_response({"error": "nothing published in this room"}, status=409)
        await pc.setLocalDescription(await pc.createOffer())
        return web.json_response({"id": pc_id, "sdp": pc.localDescription.sdp})

    async def answer(self, request: web.Request) -> web.Response:
        body = await request.json()
        pc = self.pcs.get(body["id"])
        if pc is None:
            return web.json_response({"error": "unknown id"}, status=404)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        return web.json_response({})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "peer_connections": len(self.pcs)})

    async def close(self) -> None:
        for task in self.drains:
            task.cancel()
        await asyncio.gather(*(pc.close() for pc in list(self.pcs.values())), return_exceptions=True)


async def _drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except Exception:
        pass


async def serve(host: str, port: int) -> None:
    server = RelayServer()
    app = web.Application()
    app.router.add_post("/publish", server.publish)
    app.router.add_post("/subscribe", server.subscribe)
    app.router.add_post("/answer", server.answer)
    app.router.add_get("/healthz", server.health)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("relay baseline listening on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="MediaRelay baseline (decode once, encode per subscriber)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
