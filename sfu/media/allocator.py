"""Which layer of each subscribed video track a subscriber gets, or whether it is switched off.

One ``StreamAllocator`` per subscriber transport (LiveKit's StreamAllocator): its inputs are
the subscriber's bandwidth (REMB from the subscriber), Twilio's bandwidth profile
(``contracts.BandwidthProfile``: mode, maxSubscriptionBitrate, dominantSpeakerPriority is
applied by the room model to the priorities it passes down), and per video sink its
priority, render dimensions, whether the subscriber switched it off, and its layers (a
producer's simulcast layers, low to high; one layer when it sends one stream).

``allocate`` is the pure rule; ``StreamAllocator`` adds what must not flap: a decision that
gives more (switch on, or a higher layer) is applied only once it has held for
``UPGRADE_HOLD`` seconds, while one that gives less is applied at once.

The rule, as Twilio documents the modes:
- tracks the subscriber switched off (hidden or detached elements, ``switchOff()``) are off;
- every other track, highest priority first (older subscriptions first among equals), gets
  its lowest layer while the budget lasts; a track that does not fit is switched off, so
  lower priorities give way first;
- then what is left of the budget raises tracks towards the layer their render dimensions
  need (the top one when unknown): ``presentation`` and ``collaboration`` give the highest
  priority track all it needs before the next one gets more; ``grid`` raises every track one
  layer at a time in turn, an equal share. ``presentation`` also switches low-priority tracks
  off rather than let them hold bandwidth a higher track could use: there, a track starts
  only when every track above it has all it needs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from ..contracts import BandwidthProfile, Priority

logger = logging.getLogger(__name__)

PRIORITY_RANK: dict[str, int] = {"low": 0, "standard": 1, "high": 2}
UPGRADE_HOLD = 2.0  # seconds a decision giving more must hold before it applies
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
    limits = [x for x in (estimate, cap) if x is not None]
    budget: float = min(limits) if limits else math.inf
    squeezed = MAX_BANDWIDTH_REACHED if cap is not None and (estimate is None or cap <= estimate) else NETWORK_CONGESTION
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
    for demand in live:
        cost = demand.layers[0].bitrate
        if cost <= budget and not blocked:
            layer[demand.key] = 0
            budget -= cost
            if presentation:
                budget = _raise_fully(demand, layer, budget)
                blocked = layer[demand.key] < wanted_layer(demand.layers, demand.render_dimensions)
        else:
            out[demand.key] = Decision(None, squeezed)
            blocked = blocked or presentation
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
            hold = gives_more(decision, old) and not (old is not None and old.reason == DISABLED_BY_SUBSCRIBER)
            if hold:
                waiting = self._pending.get(key)
                if waiting is None or waiting[0] != decision:
                    self._pending[key] = (decision, now)
                    continue
                if now - waiting[1] < UPGRADE_HOLD:
                    continue
            self._pending.pop(key, None)
            self.decisions[key] = decision
            changed[key] = decision
        return changed

    def forget(self, key: Hashable) -> None:
        self.decisions.pop(key, None)
        self._pending.pop(key, None)
