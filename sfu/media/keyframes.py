"""Keyframe requests from subscribers to a publisher, rate-limited per published track."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class KeyframeRequester:
    """Sends at most one PLI upstream per ``min_interval`` seconds.

    A request inside the quiet window is not lost: one PLI goes out when the window
    ends, so a subscriber that joins just after another still gets its keyframe.
    """

    def __init__(self, send_pli: Callable[[], None], min_interval: float = 0.5) -> None:
        self._send_pli = send_pli
        self._min_interval = min_interval
        self._last = float("-inf")
        self._deferred: asyncio.TimerHandle | None = None
        self.sent = 0

    def request(self) -> None:
        now = time.monotonic()
        wait = self._last + self._min_interval - now
        if wait <= 0:
            self._fire()
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._fire)

    def _fire(self) -> None:
        self._deferred = None
        self._last = time.monotonic()
        self.sent += 1
        self._send_pli()

    def close(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
