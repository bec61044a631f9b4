"""Graceful drain: what ``sfu serve`` does between SIGTERM and stopping.

SIGTERM: the server stops taking new participants (``connect`` gets 53006) and new rooms
(``POST /v1/Rooms`` gets a 503), tells every connected participant ``{"type": "draining",
"timeout": N}``, and lets the rooms go on until no participant is left or ``drain_timeout``
seconds passed. Then the server stops as it does on SIGINT: the participants still there get
``disconnected`` 53001 ``server_shutdown`` (SignalingService.close) and the rooms are ended.
A second SIGTERM or SIGINT during the drain stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import REGISTRY, SIGNALING

logger = logging.getLogger(__name__)

POLL = 0.25  # seconds between looks at the rooms while draining


def participants_left(app: web.Application) -> int:
    return sum(len(room.participants) for room in app[REGISTRY].rooms.values())


async def drain(app: web.Application, timeout: float) -> None:
    """Refuse new participants and rooms, announce the drain, and return when the rooms are
    empty or ``timeout`` seconds passed (the caller then stops the server)."""
    registry, signaling = app[REGISTRY], app[SIGNALING]
    registry.draining = True
    signaling.start_draining(timeout)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    logger.info("draining: %d participant(s) in %d room(s) may stay for up to %gs", participants_left(app), len(registry.rooms), timeout)
    while (left := participants_left(app)) and loop.time() < end:
        await asyncio.sleep(min(POLL, max(end - loop.time(), 0.0)))
    if left:
        logger.info("drain timeout: disconnecting %d participant(s)", left)
    else:
        logger.info("drained: no participant left")


async def wait_for_stop(app: web.Application, drain_timeout: float) -> None:
    """Return when the server should stop: at once on SIGINT (or with ``drain_timeout`` 0); on
    SIGTERM once the drain is over, or at a second SIGTERM / SIGINT."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    first = await signals.get()
    if first != signal.SIGTERM or drain_timeout <= 0:
        return
    draining = asyncio.ensure_future(drain(app, drain_timeout))
    second = asyncio.ensure_future(signals.get())
    try:
        done, _ = await asyncio.wait({draining, second}, return_when=asyncio.FIRST_COMPLETED)
        if second in done:
            logger.info("%s during the drain: stopping now", second.result().name)
        elif draining.exception() is not None:
            logger.error("drain failed: stopping now", exc_info=draining.exception())
    finally:
        draining.cancel()
        second.cancel()
