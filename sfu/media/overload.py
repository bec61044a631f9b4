"""Overload protection for the media plane: when the event loop falls behind, shed video.

Past saturation a loop that goes on forwarding everything falls further and further
behind: the UDP receive buffer overflows and drops STUN consent checks, DTLS and audio
along with video, and in the end the publisher's connection closes. The guard measures
how late a periodic timer runs (the loop's lag, smoothed) and, while that stays high,
leaves video consumers out of the fan-out a few at a time, lowest priority first and then
the newest subscription first. Once the loop has been on time for a while it lets them
back one step at a time (each starts again at a keyframe). Audio is never shed.

One guard per event loop, since the loop is what overloads: every media plane on it
shares it (``guard_for``). Video consumers register when they attach and leave when they
detach; the guard's timer runs only while any are registered. Its counters (``lag``,
``level``, ``shed_total``, ``resumed_total``, ``shed_now``) are for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

logger = logging.getLogger(__name__)

PRIORITY_RANK = {"low": 0, "standard": 1, "high": 2}  # Twilio track priorities


class Level(IntEnum):
    NORMAL = 0  # on time: shed consumers may come back
    BUSY = 1  # between the thresholds: hold
    OVERLOADED = 2  # behind: shed


@dataclass
class OverloadSettings:
    interval: float = 0.05  # seconds between two probes of the loop's lag
    smoothing: float = 0.2  # weight of a new probe in the smoothed lag
    high: float = 0.05  # smoothed lag (seconds) from which the loop counts as overloaded,
    saturated: float = 0.5  # if its input is also backlogged this much (OverloadGuard.backlog):
    # a loop that lags only because of bursts (a keyframe to 200 subscribers blocks it for
    # 100+ ms) but drains its input between them is not overloaded; shedding would not help it
    low: float = 0.01  # and under which it is on time
    sustain: float = 1.0  # seconds overloaded before the first step (not a passing hiccup)
    step: float = 0.1  # share of the registered video consumers shed or resumed per step (at least one)
    cooldown: float = 0.5  # seconds, and
    cooldown_probes: int = 4  # probes, between two shedding steps: let the lag show their effect;
    improving: float = 0.8  # and while the lag falls below this share of what it was at the last
    patience: float = 3.0  # step (a backlog draining), no further step for up to this many seconds
    calm: float = 3.0  # seconds on time before a resuming step
    calm_max: float = 30.0  # the calm doubles (up to this) each time resuming overloaded the loop
    # again, and halves back with each resuming step that did not


class Sheddable(Protocol):
    """What the guard needs of a consumer (sfu.media.consumer.Consumer)."""

    priority: str
    order: int  # subscription order: higher is newer
    shed: bool

    @property
    def forwarding(self) -> bool: ...

    def set_shed(self, shed: bool) -> None: ...


class OverloadGuard:
    """The event loop's lag detector and the video shedding policy acting on it."""

    def __init__(self, settings: OverloadSettings | None = None, probe: bool = True) -> None:
        """``probe``: measure the running loop's lag with a timer (tests drive ``observe``)."""
        self.settings = settings or OverloadSettings()
        self._probe = probe
        self.lag = 0.0  # smoothed, seconds
        self.saturation = 1.0  # the input backlog seen at the last probe (1: assumed without a source)
        # Where the input backlog is read: 0 (input drained) to 1 (every read finds more
        # waiting), e.g. the UDP mux's saturation. None: lag alone decides.
        self.backlog: Callable[[], float] | None = None
        self.peak_lag = 0.0  # the largest single probe, seconds
        self.level = Level.NORMAL
        self.shed_total = 0  # consumers shed so far
        self.resumed_total = 0  # consumers let back so far
        self.shed_steps = 0
        self._consumers: dict[Sheddable, None] = {}
        self._shed: list[Sheddable] = []
        self._level_since = 0.0
        self._last_action = float("-inf")
        self._last_action_was_resume = False
        self._probes_since_action = 0
        self._lag_at_action = 0.0
        self._calm = self.settings.calm
        self._running = False
        self._due = 0.0

    # --- registry ----------------------------------------------------------------------

    def register(self, consumer: Sheddable) -> None:
        self._consumers[consumer] = None
        if consumer.shed and consumer not in self._shed:
            self._shed.append(consumer)
        if self._probe and not self._running:
            self._start()

    def unregister(self, consumer: Sheddable) -> None:
        self._consumers.pop(consumer, None)
        if consumer in self._shed:
            self._shed.remove(consumer)

    @property
    def shed_now(self) -> int:
        """Video consumers left out of the fan-out now."""
        return len(self._shed)

    @property
    def registered(self) -> int:
        return len(self._consumers)

    # --- the probe ---------------------------------------------------------------------

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the next registration made on one starts the probe
        self._running = True
        self._due = loop.time() + self.settings.interval
        loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        if not self._consumers:  # nothing to protect: stop until the next registration
            self._running = False
            self.lag = 0.0
            self.level = Level.NORMAL
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            self.observe(max(0.0, now - self._due), now, 1.0 if self.backlog is None else self.backlog())
        except Exception:
            logger.exception("overload guard failed")
        self._due = now + self.settings.interval
        loop.call_at(self._due, self._tick)

    # --- the policy --------------------------------------------------------------------

    def observe(self, lateness: float, now: float, saturation: float = 1.0) -> None:
        """One probe: the timer ran ``lateness`` seconds late at loop time ``now``, with the
        input ``saturation`` backlogged (0 drained, 1 always more waiting)."""
        s = self.settings
        self.lag += s.smoothing * (lateness - self.lag)
        self.saturation = saturation
        self.peak_lag = max(self.peak_lag, lateness)
        self._probes_since_action += 1
        if self.lag >= s.high and saturation >= s.saturated:
            level = Level.OVERLOADED
        elif self.lag < s.low or saturation < s.saturated / 2:
            # On time, or draining its input between bursts (a busy loop serving a large
            # fan-out never gets its lag under ``low``, yet has room for what was shed).
            level = Level.NORMAL
        else:
            level = Level.BUSY
        if level != self.level:
            logger.debug("media plane %s: event loop lag %.0f ms", level.name.lower(), self.lag * 1000)
            self.level = level
            self._level_since = now
        if level == Level.OVERLOADED:
            since = now - self._last_action
            if (
                now - self._level_since >= s.sustain
                and since >= s.cooldown
                and self._probes_since_action >= s.cooldown_probes
                and (self.lag > s.improving * self._lag_at_action or since >= s.patience or self._last_action_was_resume)
            ):
                self._shed_step(now)
        elif level == Level.NORMAL and self._shed:
            if now - max(self._level_since, self._last_action) >= self._calm:
                self._resume_step(now)

    def _step_size(self) -> int:
        return max(1, math.ceil(self.settings.step * len(self._consumers)))

    def _shed_step(self, now: float) -> None:
        candidates = [c for c in self._consumers if c.forwarding]
        if not candidates:
            return  # all video is shed already: nothing left to take
        if self._last_action_was_resume and now - self._last_action < self.settings.calm_max:
            # letting them back overloaded the loop again: wait longer before the next try
            self._calm = min(self._calm * 2, self.settings.calm_max)
        candidates.sort(key=lambda c: (PRIORITY_RANK.get(c.priority, 1), -c.order))
        chosen = candidates[: self._step_size()]
        for consumer in chosen:
            consumer.set_shed(True)
            self._shed.append(consumer)
        self.shed_total += len(chosen)
        self.shed_steps += 1
        self._acted(now, resumed=False)
        logger.warning(
            "media plane overloaded (lag %.0f ms): shed %d video consumer(s), %d shed now",
            self.lag * 1000, len(chosen), len(self._shed),
        )

    def _resume_step(self, now: float) -> None:
        self._shed.sort(key=lambda c: (PRIORITY_RANK.get(c.priority, 1), -c.order))
        count = self._step_size()
        chosen = self._shed[-count:]  # the best of those shed: highest priority, oldest
        del self._shed[-count:]
        for consumer in chosen:
            consumer.set_shed(False)
        self.resumed_total += len(chosen)
        if self._last_action_was_resume:  # the previous step held: the next may come sooner
            self._calm = max(self.settings.calm, self._calm / 2)
        self._acted(now, resumed=True)
        if not self._shed:
            self._calm = self.settings.calm
        logger.info("media plane on time: resumed %d video consumer(s), %d shed now", len(chosen), len(self._shed))

    def _acted(self, now: float, resumed: bool) -> None:
        self._last_action = now
        self._lag_at_action = self.lag
        self._last_action_was_resume = resumed
        self._probes_since_action = 0


_guards: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OverloadGuard]" = weakref.WeakKeyDictionary()


def guard_for(loop: asyncio.AbstractEventLoop) -> OverloadGuard:
    """The guard of ``loop`` (made on first use)."""
    guard = _guards.get(loop)
    if guard is None:
        guard = _guards[loop] = OverloadGuard()
    return guard


def guard_for_running_loop() -> OverloadGuard | None:
    """The guard of the running loop, or None outside one."""
    try:
        return guard_for(asyncio.get_running_loop())
    except RuntimeError:
        return None
