"""Which layer of each subscribed video track a subscriber gets, or whether it is switched off.

One ``StreamAllocator`` per subscriber transport (LiveKit's StreamAllocator): its inputs are
the subscriber's bandwidth (REMB from the subscriber), Twilio's bandwidth profile
(``contracts.BandwidthProfile``: mode, maxSubscriptionBitrate, and dominantSpeakerPriority:
the dominant speaker's tracks, which the room passes down, get at least that priority), and
per video sink its priority, render dimensions, whether the subscriber switched it off, and
its layers (a producer's simulcast layers, low to high; one layer when it sends one stream).

``allocate`` is the pure rule; ``StreamAllocator`` adds what must not flap: a decision that
gives more (switch on, or a higher layer) is applied only once it has held for
``UPGRADE_HOLD`` seconds, a switch-off for the estimate once it has held ``CONGESTION_HOLD``,
and any other that gives less at once.

The rule, as Twilio documents the modes:
- tracks the subscriber switched off (hidden or detached elements, ``switchOff()``) are off;
- every other track, highest priority first (older subscriptions first among equals), gets
  its lowest layer while ``maxSubscriptionBitrate`` lasts; a track that does not fit is
  switched off, so lower priorities give way first. The bandwidth estimate alone lowers
  layers but switches no track off (except in ``presentation``, below): REMB is a delay-based
  estimate bounded by what the subscriber receives now (about 1.5 times it), so without
  probing a track switched off for it would never come back;
- then what is left of the budget raises tracks towards the layer their render dimensions
  need (the top one when unknown): ``presentation`` and ``collaboration`` give the highest
  priority track all it needs before the next one gets more; ``grid`` raises every track one
  layer at a time in turn, an equal share. ``presentation`` also switches low-priority tracks
  off rather than let them hold bandwidth a higher track could use: there, a track starts
  only when every track above it has all it needs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from ..contracts import BandwidthProfile, Priority

logger = logging.getLogger(__name__)

PRIORITY_RANK: dict[str, int] = {"low": 0, "standard": 1, "high": 2}
UPGRADE_HOLD = 2.0  # seconds a decision giving more must hold before it applies
CONGESTION_HOLD = 1.0  # seconds a switch-off for the bandwidth estimate must hold (estimates dip)
DEFAULT_LAYER_BITRATE = 150_000  # bps of a layer not measured yet

# Why a track is off (the reasons Twilio's newer SDKs give as RemoteVideoTrack.switchOffReason).
DISABLED_BY_SUBSCRIBER = "disabled-by-subscriber"
MAX_BANDWIDTH_REACHED = "max-bandwidth-reached"
NETWORK_CONGESTION = "network-congestion"


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer a track can be forwarded at (bitrate in bps; dimensions when known)."""

    bitrate: int
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class Demand:
    """One subscribed video track as the allocator sees it."""

    key: Hashable
    priority: Priority
    layers: Sequence[Layer]  # low to high, at least one
    render_dimensions: tuple[int, int] | None = None
    switched_off_by_client: bool = False
    order: int = 0  # older subscriptions first among equal priorities


@dataclass(frozen=True, slots=True)
class Decision:
    layer: int | None  # None: switched off
    reason: str | None = None  # why it is off


def wanted_layer(layers: Sequence[Layer], render: tuple[int, int] | None) -> int:
    """The lowest layer at least as large as the render dimensions (the top one when the
    dimensions or the layers' sizes are unknown)."""
    top = len(layers) - 1
    if render is None:
        return top
    width, height = render
    for index, layer in enumerate(layers):
        if layer.width is None or layer.height is None:
            return top
        if layer.width >= width and layer.height >= height:
            return index
    return top


def allocate(
    demands: Sequence[Demand], estimate: int | None, profile: BandwidthProfile
) -> dict[Hashable, Decision]:
    """Decide a layer (or switch-off) for every demand. ``estimate``: the subscriber's
    available bandwidth in bps (None: unknown, no limit from the network)."""
    cap = profile.max_subscription_bitrate or None
    cap_left: float = cap if cap is not None else math.inf
    estimate_left: float = estimate if estimate is not None else math.inf
    out: dict[Hashable, Decision] = {}
    live = []
    for demand in demands:
        if demand.switched_off_by_client:
            out[demand.key] = Decision(None, DISABLED_BY_SUBSCRIBER)
        else:
            live.append(demand)
    live.sort(key=lambda d: (-PRIORITY_RANK.get(d.priority, 1), d.order))
    layer: dict[Hashable, int] = {}
    presentation = profile.mode == "presentation"
    blocked = False  # presentation: a track above did not get all it needs
    reason = MAX_BANDWIDTH_REACHED
    for demand in live:
        cost = demand.layers[0].bitrate
        if cost <= cap_left and not blocked:
            layer[demand.key] = 0
            cap_left -= cost
            estimate_left = max(0.0, estimate_left - cost)  # (the estimate alone switches nothing off)
            if presentation:
                budget = min(cap_left, estimate_left)
                spent = budget - _raise_fully(demand, layer, budget)
                cap_left, estimate_left = cap_left - spent, estimate_left - spent
                if layer[demand.key] < wanted_layer(demand.layers, demand.render_dimensions):
                    blocked = True
                    reason = NETWORK_CONGESTION if estimate_left < cap_left else MAX_BANDWIDTH_REACHED
        else:
            out[demand.key] = Decision(None, reason)
            blocked = blocked or presentation
    budget = min(cap_left, estimate_left)
    on = [d for d in live if d.key in layer]
    if profile.mode == "collaboration":
        for demand in on:
            budget = _raise_fully(demand, layer, budget)
    elif profile.mode == "grid":
        raised = True
        while raised:  # one layer each, in turn: an equal share
            raised = False
            for demand in on:
                current = layer[demand.key]
                if current >= wanted_layer(demand.layers, demand.render_dimensions):
                    continue
                step = demand.layers[current + 1].bitrate - demand.layers[current].bitrate
                if step <= budget:
                    layer[demand.key] = current + 1
                    budget -= step
                    raised = True
    for demand in on:
        out[demand.key] = Decision(layer[demand.key])
    return out


def _raise_fully(demand: Demand, layer: dict[Hashable, int], budget: float) -> float:
    """Raise one track to the highest layer it needs that fits; returns the budget left."""
    current = layer[demand.key]
    spent = demand.layers[current].bitrate
    for index in range(wanted_layer(demand.layers, demand.render_dimensions), current, -1):
        extra = demand.layers[index].bitrate - spent
        if extra <= budget:
            layer[demand.key] = index
            return budget - extra
    return budget


def gives_more(new: Decision, old: Decision | None) -> bool:
    if old is None:
        return False  # a new sink takes its first decision at once
    if new.layer is None:
        return False
    return old.layer is None or new.layer > old.layer


class StreamAllocator:
    """Applies ``allocate`` to one subscriber's sinks, holding back upgrades until they last.

    ``update`` takes the current demands and returns the decisions that changed (to apply);
    the clock is injectable for tests."""

    def __init__(self, profile: BandwidthProfile | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.profile = profile or BandwidthProfile()
        self.clock = clock
        self.decisions: dict[Hashable, Decision] = {}
        self._pending: dict[Hashable, tuple[Decision, float]] = {}  # upgrades waiting: (decision, since)

    def update(self, demands: Sequence[Demand], estimate: int | None) -> dict[Hashable, Decision]:
        now = self.clock()
        proposed = allocate(demands, estimate, self.profile)
        changed: dict[Hashable, Decision] = {}
        for key in [k for k in self.decisions if k not in proposed]:
            del self.decisions[key]
            self._pending.pop(key, None)
        for key, decision in proposed.items():
            old = self.decisions.get(key)
            if decision == old:
                self._pending.pop(key, None)
                continue
            # The subscriber's own switch-on is no upgrade to wait for: it asked.
            hold = 0.0
            if gives_more(decision, old) and not (old is not None and old.reason == DISABLED_BY_SUBSCRIBER):
                hold = UPGRADE_HOLD
            elif decision.reason == NETWORK_CONGESTION and old is not None and old.layer is not None:
                hold = CONGESTION_HOLD
            if hold:
                waiting = self._pending.get(key)
                if waiting is None or waiting[0] != decision:
                    self._pending[key] = (decision, now)
                    continue
                if now - waiting[1] < hold:
                    continue
            self._pending.pop(key, None)
            self.decisions[key] = decision
            changed[key] = decision
        return changed

    def forget(self, key: Hashable) -> None:
        self.decisions.pop(key, None)
        self._pending.pop(key, None)


# --- the plumbing: one subscriber transport's video sinks ------------------------------------

TICK = 0.5  # seconds between decisions (the bandwidth estimate and the bitrates move)
# REMB without congestion sits at about 1.5 times what the subscriber receives (the AIMD
# ceiling): there the estimate says "no congestion", not "no more room", and the allocator
# lets the subscriber try one more layer step (each after UPGRADE_HOLD): with no probing of
# its own, real media is the probe, and a step too far is taken back at the next REMB.
CEILING_RATIO = 1.3
BITRATE_SMOOTHING = 0.3  # weight of a new bitrate sample


class BitrateMeter:
    """A source's received bitrate (bps), smoothed, from its running octet count."""

    def __init__(self) -> None:
        self.bitrate: float | None = None
        self._last: tuple[int, float] | None = None

    def sample(self, octets: int, now: float) -> None:
        last = self._last
        self._last = (octets, now)
        if last is None or now <= last[1] or octets < last[0]:
            return
        rate = (octets - last[0]) * 8 / (now - last[1])
        self.bitrate = rate if self.bitrate is None else self.bitrate + BITRATE_SMOOTHING * (rate - self.bitrate)


def _track(consumer: object) -> Any:
    """The published track a consumer forwards (``source`` where the consumer knows
    simulcast layers: its ``producer`` is then the layer it forwards now)."""
    return getattr(consumer, "source", None) or getattr(consumer, "producer")


class SubscriberAllocation:
    """Runs a ``StreamAllocator`` over one transport's video consumers every ``TICK`` and
    when its inputs change, and carries the decisions out.

    A consumer switched off leaves its producer's fan-out (``set_target_layer(None)`` where
    the consumer knows simulcast layers, else ``pause()``), so it costs no forwarding; on
    again, it resumes at a keyframe. ``on_switched(sink, off, reason)`` and
    ``on_layer(sink, layer)`` report the changes (the transport's listener)."""

    def __init__(
        self,
        on_switched: Callable[[object, bool, str | None], None],
        on_layer: Callable[[object, int], None],
        clock: Callable[[], float] = time.monotonic,
        dominant: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        """``dominant``: the track SIDs of the room's dominant speaker, as the room last said."""
        self.allocator = StreamAllocator(clock=clock)
        self._dominant = dominant
        self.clock = clock
        self._on_switched = on_switched
        self._on_layer = on_layer
        self.sinks: dict[object, tuple[tuple[int, int] | None, bool]] = {}  # consumer -> (render, switched off by client)
        self._meters: dict[object, BitrateMeter] = {}  # producer -> its meter
        self._task: asyncio.Task[None] | None = None
        self._poked: asyncio.Handle | None = None
        self.closed = False

    @property
    def switched_off(self) -> int:
        """How many of its sinks are switched off now."""
        return sum(1 for d in self.allocator.decisions.values() if d.layer is None)

    def set_profile(self, profile: BandwidthProfile) -> None:
        self.allocator.profile = profile
        self.poke()

    def add(self, consumer: object) -> None:
        self.sinks.setdefault(consumer, (None, False))
        if self._task is None and not self.closed:
            self._task = asyncio.ensure_future(self._run())
        self.poke()

    def remove(self, consumer: object) -> None:
        if self.sinks.pop(consumer, None) is not None:
            self.allocator.forget(consumer)
            track = _track(consumer)
            if not any(_track(c) is track for c in self.sinks):
                self._meters.pop(track, None)

    def set_hints(self, consumer: object, render: tuple[int, int] | None, switched_off: bool) -> None:
        if consumer in self.sinks:
            self.sinks[consumer] = (render, switched_off)
            self.poke()

    def poke(self) -> None:
        """Decide again soon (coalesced): an input changed."""
        if self._poked is None and not self.closed:
            self._poked = asyncio.get_running_loop().call_soon(self._poked_now)

    def _poked_now(self) -> None:
        self._poked = None
        self.update()

    async def _run(self) -> None:
        while not self.closed:
            await asyncio.sleep(TICK)
            try:
                self.update()
            except Exception:  # a bug here must not stop allocation for good
                logger.exception("allocation update failed")

    def estimate(self) -> int | None:
        """The subscriber's bandwidth: its latest REMB (one REMB lists all its SSRCs)."""
        estimates = [e for e in (getattr(c, "remb")() for c in self.sinks) if e]
        return max(estimates) if estimates else None

    def budget(self, demands: Sequence[Demand]) -> int | None:
        """The bandwidth to allocate: the estimate, or more when it sits at its ceiling."""
        estimate = self.estimate()
        if estimate is None:
            return None
        received = step = 0
        for demand in demands:
            decision = self.allocator.decisions.get(demand.key)
            if decision is not None and decision.layer is not None:
                current = min(decision.layer, len(demand.layers) - 1)
                received += demand.layers[current].bitrate
                if current < wanted_layer(demand.layers, demand.render_dimensions):
                    step = max(step, demand.layers[current + 1].bitrate - demand.layers[current].bitrate)
        if received and step and estimate >= CEILING_RATIO * received:
            return max(estimate, received + step)
        return estimate

    def layers(self, consumer: object) -> list[Layer]:
        """The track's layers, low to high: the producer's own (simulcast: each measured)
        without the top ones that receive nothing now (a publisher short of bandwidth stops
        its high layers), or one layer measured here."""
        track = _track(consumer)
        described = getattr(track, "layers", None)
        if described:
            rates = [int(getattr(layer, "bitrate", 0) or 0) for layer in described]
            while len(rates) > 1 and rates[-1] == 0 and any(rates):
                rates.pop()
            return [
                Layer(rate or DEFAULT_LAYER_BITRATE, getattr(layer, "width", None), getattr(layer, "height", None))
                for rate, layer in zip(rates, described)
            ]
        meter = self._meters.get(track)
        bitrate = meter.bitrate if meter is not None else None
        return [Layer(int(bitrate) if bitrate else DEFAULT_LAYER_BITRATE)]

    def update(self) -> None:
        if self.closed:
            return
        now = self.clock()
        for consumer in self.sinks:
            track = _track(consumer)
            meter = self._meters.get(track)
            if meter is None:
                meter = self._meters[track] = BitrateMeter()
            meter.sample(getattr(track, "stats").octets, now)
        dominant, floor = self._dominant(), self.allocator.profile.dominant_speaker_priority
        demands = []
        for consumer, (render, off) in self.sinks.items():
            priority: Priority = getattr(consumer, "priority", "standard")
            if getattr(consumer, "track_sid", None) in dominant and PRIORITY_RANK[floor] > PRIORITY_RANK.get(priority, 1):
                priority = floor  # Twilio: the dominant speaker's video at least dominantSpeakerPriority
            demands.append(Demand(consumer, priority, self.layers(consumer), render, off, getattr(consumer, "order", 0)))
        before = dict(self.allocator.decisions)
        for consumer, decision in self.allocator.update(demands, self.budget(demands)).items():
            self._apply(consumer, decision, before.get(consumer))
        for consumer, decision in self.allocator.decisions.items():
            self.enforce(consumer, decision)

    def enforce(self, consumer: object, decision: Decision | None = None) -> None:
        """Keep a switched-off consumer out of the fan-out (attaching one unpauses it)."""
        decision = decision or self.allocator.decisions.get(consumer)
        if decision is None or decision.layer is not None:
            return
        if not hasattr(consumer, "set_target_layer") and not getattr(consumer, "paused"):
            getattr(consumer, "pause")()

    def _apply(self, consumer: object, decision: Decision, old: Decision | None) -> None:
        target = getattr(consumer, "set_target_layer", None)
        if target is not None:
            target(decision.layer)
        elif decision.layer is None:
            getattr(consumer, "pause")()
        else:
            getattr(consumer, "resume")()
        was_off = old is not None and old.layer is None
        if decision.layer is None and not was_off:
            logger.debug("switching off track %s: %s", getattr(consumer, "track_sid", "?"), decision.reason)
            self._on_switched(consumer, True, decision.reason)
        elif decision.layer is not None:
            if was_off:
                logger.debug("switching on track %s", getattr(consumer, "track_sid", "?"))
                self._on_switched(consumer, False, None)
            if old is None or old.layer != decision.layer:
                self._on_layer(consumer, decision.layer)
        elif old is not None and old.reason != decision.reason:
            self._on_switched(consumer, True, decision.reason)  # still off, for another reason

    def close(self) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()
        if self._poked is not None:
            self._poked.cancel()
            self._poked = None
        self.sinks.clear()
