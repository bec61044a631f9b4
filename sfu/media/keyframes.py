"""Keyframe requests from subscribers to a publisher, rate-limited per published track."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class KeyframeRequester:
    """Sends PLIs upstream for one published track, never more than the publisher needs.

    ``request()`` (a subscriber's PLI or FIR, a re-ask while one waits) sends at most one
    PLI per ``min_interval`` seconds. A request inside that window is not lost: one PLI
    goes out when the window ends, so a subscriber that asks just after another still
    gets its keyframe.

    ``request_urgent()`` (a subscriber starting) is not held back by that window, so a new
    subscriber's first frame does not wait for it. It is still coalesced: while a PLI is
    unanswered (no keyframe since, and sent less than ``patience`` seconds ago) it adds
    nothing, since that keyframe serves the newcomer too; and two PLIs are never less than
    ``floor`` seconds apart. N subscribers joining at once therefore cause one PLI.
    """

    def __init__(
        self,
        send_pli: Callable[[], None],
        min_interval: float = 0.5,
        floor: float = 0.1,
        patience: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send_pli = send_pli
        self._min_interval = min_interval
        self._floor = min(floor, min_interval)
        self._patience = patience
        self._clock = clock
        self._last = float("-inf")
        self._unanswered = False  # the last PLI has had no keyframe since
        self._deferred: asyncio.TimerHandle | None = None
        self._deferred_at = 0.0
        self.sent = 0
        self.coalesced = 0  # urgent requests served by a PLI already on its way

    def request(self) -> None:
        self._schedule(self._min_interval)

    def request_urgent(self) -> None:
        if self._unanswered and self._clock() - self._last < self._patience:
            self.coalesced += 1
            return
        self._schedule(self._floor)

    def keyframe_received(self) -> None:
        self._unanswered = False

    def _schedule(self, interval: float) -> None:
        now = self._clock()
        due = self._last + interval
        if due <= now:
            self._fire()
            return
        if self._deferred is not None:
            if self._deferred_at <= due:
                return  # one PLI is already due by then
            self._deferred.cancel()
        self._deferred_at = due
        self._deferred = asyncio.get_running_loop().call_later(due - now, self._fire)

    def _fire(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        self._last = self._clock()
        self._unanswered = True
        self.sent += 1
        self._send_pli()

    def close(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
