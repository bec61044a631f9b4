"""The allocation rule (sfu.media.allocator): layers and switch-off from bandwidth, render
dimensions, priority and Twilio's bandwidth profile modes. Pure: no network, no clock."""

from __future__ import annotations

from sfu.contracts import BandwidthProfile
from sfu.media.allocator import (
    CONGESTION_HOLD,
    DISABLED_BY_SUBSCRIBER,
    MAX_BANDWIDTH_REACHED,
    NETWORK_CONGESTION,
    UPGRADE_HOLD,
    Decision,
    Demand,
    Layer,
    StreamAllocator,
    allocate,
    wanted_layer,
)

SIMULCAST = (Layer(150_000, 320, 180), Layer(500_000, 640, 360), Layer(1_500_000, 1280, 720))
SINGLE = (Layer(400_000),)


def demand(key: str, priority: str = "standard", layers=SIMULCAST, render=None, off=False, order=0) -> Demand:
    return Demand(key, priority, layers, render, off, order)  # type: ignore[arg-type]


def layers_of(decisions: dict) -> dict:
    return {k: d.layer for k, d in decisions.items()}


def test_without_any_limit_every_track_gets_the_layer_its_render_size_needs() -> None:
    got = allocate([demand("a"), demand("b", render=(320, 180)), demand("c", render=(600, 300))], None, BandwidthProfile())
    assert layers_of(got) == {"a": 2, "b": 0, "c": 1}


def test_wanted_layer_is_the_top_one_when_sizes_are_unknown() -> None:
    assert wanted_layer(SINGLE, (100, 100)) == 0
    assert wanted_layer((Layer(1), Layer(2)), (100, 100)) == 1
    assert wanted_layer(SIMULCAST, (4000, 4000)) == 2


def test_a_track_the_subscriber_switched_off_is_off_whatever_the_bandwidth() -> None:
    got = allocate([demand("a", off=True), demand("b")], None, BandwidthProfile())
    assert got["a"] == Decision(None, DISABLED_BY_SUBSCRIBER)
    assert got["b"].layer == 2


def test_under_pressure_the_lowest_priority_is_switched_off_first() -> None:
    demands = [demand("low", "low", SINGLE, order=0), demand("std", "standard", SINGLE, order=1), demand("high", "high", SINGLE, order=2)]
    got = allocate(demands, None, BandwidthProfile(max_subscription_bitrate=900_000))
    assert layers_of(got) == {"high": 0, "std": 0, "low": None}
    assert got["low"].reason == MAX_BANDWIDTH_REACHED
    got = allocate(demands, None, BandwidthProfile(max_subscription_bitrate=500_000))
    assert layers_of(got) == {"high": 0, "std": None, "low": None}


def test_the_estimate_lowers_layers_lowest_priority_first_but_switches_nothing_off() -> None:
    demands = [demand("low", "low"), demand("high", "high")]
    got = allocate(demands, 100_000, BandwidthProfile(mode="collaboration"))
    assert got == {"high": Decision(0), "low": Decision(0)}
    got = allocate(demands, 900_000, BandwidthProfile(mode="collaboration"))
    assert layers_of(got) == {"high": 1, "low": 0}
    got = allocate(demands, None, BandwidthProfile(max_subscription_bitrate=100_000))
    assert got["high"] == Decision(None, MAX_BANDWIDTH_REACHED) and got["low"] == Decision(None, MAX_BANDWIDTH_REACHED)


def test_presentation_switches_lower_tracks_off_for_the_estimate_too() -> None:
    got = allocate([demand("high", "high"), demand("low", "low")], 1_000_000, BandwidthProfile(mode="presentation"))
    assert got == {"high": Decision(1), "low": Decision(None, NETWORK_CONGESTION)}


def test_equal_priorities_keep_the_older_subscription() -> None:
    got = allocate([demand("new", order=5, layers=SINGLE), demand("old", order=1, layers=SINGLE)], None, BandwidthProfile(max_subscription_bitrate=500_000))
    assert layers_of(got) == {"old": 0, "new": None}


def test_max_subscription_bitrate_caps_the_estimate_and_names_the_reason() -> None:
    profile = BandwidthProfile(max_subscription_bitrate=500_000)
    got = allocate([demand("a", layers=SINGLE, order=0), demand("b", layers=SINGLE, order=1)], 10_000_000, profile)
    assert layers_of(got) == {"a": 0, "b": None}
    assert got["b"].reason == MAX_BANDWIDTH_REACHED


def test_grid_shares_equally_one_layer_at_a_time() -> None:
    # 2 x 150k base = 300k; 1.3M left: each goes to 500k (700k), then 1.5M does not fit.
    got = allocate([demand("high", "high"), demand("low", "low")], 1_300_000, BandwidthProfile(mode="grid"))
    assert layers_of(got) == {"high": 1, "low": 1}


def test_collaboration_gives_higher_priority_all_it_needs_first_but_keeps_the_others_on() -> None:
    got = allocate([demand("high", "high"), demand("low", "low")], 1_700_000, BandwidthProfile(mode="collaboration"))
    assert layers_of(got) == {"high": 2, "low": 0}


def test_presentation_switches_lower_priority_off_until_higher_has_all_it_needs() -> None:
    profile = BandwidthProfile(mode="presentation")
    got = allocate([demand("high", "high"), demand("low", "low")], 1_400_000, profile)
    assert layers_of(got) == {"high": 1, "low": None}  # high could not reach its top layer
    got = allocate([demand("high", "high"), demand("low", "low")], 1_700_000, profile)
    assert layers_of(got) == {"high": 2, "low": 0}


def test_render_dimensions_keep_a_small_tile_low_even_with_bandwidth_to_spare() -> None:
    got = allocate([demand("tile", render=(160, 90)), demand("stage", render=(1280, 720))], 10_000_000, BandwidthProfile(mode="collaboration"))
    assert layers_of(got) == {"tile": 0, "stage": 2}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_drops_apply_at_once_and_recoveries_only_once_they_have_held() -> None:
    clock = Clock()
    allocator = StreamAllocator(BandwidthProfile(), clock)
    demands = [demand("a")]
    assert allocator.update(demands, 5_000_000) == {"a": Decision(2)}
    assert allocator.update(demands, 200_000) == {"a": Decision(0)}  # the estimate fell: at once
    clock.now += 0.5
    assert allocator.update(demands, 5_000_000) == {}  # recovered: not yet
    clock.now += UPGRADE_HOLD / 2
    assert allocator.update(demands, 5_000_000) == {}
    clock.now += UPGRADE_HOLD
    assert allocator.update(demands, 5_000_000) == {"a": Decision(2)}
    assert allocator.decisions["a"] == Decision(2)


def test_a_flapping_estimate_never_raises_the_layer() -> None:
    clock = Clock()
    allocator = StreamAllocator(BandwidthProfile(), clock)
    allocator.update([demand("a")], 200_000)
    for i in range(10):
        clock.now += UPGRADE_HOLD / 3
        allocator.update([demand("a")], 5_000_000 if i % 2 == 0 else 200_000)
    assert allocator.decisions["a"] == Decision(0)


def test_the_subscribers_own_switch_on_applies_at_once() -> None:
    allocator = StreamAllocator(BandwidthProfile(), Clock())
    assert allocator.update([demand("a", off=True)], None) == {"a": Decision(None, DISABLED_BY_SUBSCRIBER)}
    assert allocator.update([demand("a")], None) == {"a": Decision(2)}


def test_a_sink_that_goes_is_forgotten() -> None:
    allocator = StreamAllocator(BandwidthProfile(), Clock())
    allocator.update([demand("a"), demand("b")], None)
    allocator.update([demand("b")], None)
    assert set(allocator.decisions) == {"b"}


# --- the plumbing, with fake consumers: REMB in, pause/resume or set_target_layer out ------


class FakeProducer:
    def __init__(self, layers=None) -> None:
        self.stats = type("Stats", (), {"octets": 0})()
        if layers is not None:
            self.layers = layers


class FakeConsumer:
    def __init__(self, name: str, priority: str, order: int, layers=None, simulcast: bool = False) -> None:
        self.track_sid = name
        self.producer = FakeProducer(layers)
        self.priority = priority
        self.order = order
        self.estimate: int | None = None
        self.paused = False
        self.targets: list[int | None] = []
        if simulcast:
            self.set_target_layer = self.targets.append

    def remb(self) -> int | None:
        return self.estimate

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


def plumbing(clock: Clock):
    from sfu.media.allocator import SubscriberAllocation

    events: list[tuple] = []
    allocation = SubscriberAllocation(
        lambda sink, off, reason: events.append((sink.track_sid, "off" if off else "on", reason)),
        lambda sink, layer: events.append((sink.track_sid, "layer", layer)),
        clock=clock,
    )
    return allocation, events


async def test_a_low_remb_lowers_layers_but_pauses_nothing_and_the_cap_pauses_the_lowest_priority() -> None:
    clock = Clock()
    allocation, events = plumbing(clock)
    consumers = [FakeConsumer("low", "low", 0), FakeConsumer("high", "high", 1), FakeConsumer("std", "standard", 2)]

    def run(seconds: float) -> None:
        """Time passes, each producer receiving 400 kbps, the allocator ticking."""
        for _ in range(int(seconds / 0.5)):
            clock.now += 0.5
            for c in consumers:
                c.producer.stats.octets += 25_000
            allocation.update()

    try:
        for c in consumers:
            allocation.add(c)
        run(2.0)
        for c in consumers:
            c.estimate = 100_000  # far below the three: with one layer each, nothing to lower
        run(CONGESTION_HOLD + 0.5)
        assert not any(c.paused for c in consumers)
        allocation.set_profile(BandwidthProfile(max_subscription_bitrate=900_000))  # two of the three fit
        run(0.5)
        assert [c.paused for c in consumers] == [True, False, False]
        assert ("low", "off", MAX_BANDWIDTH_REACHED) in events
        allocation.set_profile(BandwidthProfile(max_subscription_bitrate=2_000_000))
        run(0.5)
        assert consumers[0].paused  # not yet: a recovery must hold
        run(UPGRADE_HOLD + 0.5)
        assert not consumers[0].paused and events[-2:] == [("low", "on", None), ("low", "layer", 0)]
    finally:
        allocation.close()


async def test_a_falling_estimate_drops_a_simulcast_layer_and_recovery_raises_it() -> None:
    clock = Clock()
    allocation, events = plumbing(clock)
    consumer = FakeConsumer("cam", "standard", 0, layers=[Layer(150_000, 320, 180), Layer(500_000, 640, 360), Layer(1_500_000, 1280, 720)], simulcast=True)
    try:
        allocation.add(consumer)
        allocation.update()
        assert consumer.targets[-1] == 2 and not consumer.paused
        consumer.estimate = 600_000
        allocation.update()
        assert consumer.targets[-1] == 1 and events[-1] == ("cam", "layer", 1)
        consumer.estimate = 100_000
        allocation.update()
        assert consumer.targets[-1] == 0 and events[-1] == ("cam", "layer", 0)  # the estimate switches nothing off
        consumer.estimate = 5_000_000
        allocation.update()
        clock.now += UPGRADE_HOLD + 0.1
        allocation.update()
        assert consumer.targets[-1] == 2 and events[-1] == ("cam", "layer", 2)
        allocation.set_hints(consumer, (320, 180), False)  # a small tile needs only the low layer
        allocation.update()
        assert consumer.targets[-1] == 0
        allocation.set_hints(consumer, (320, 180), True)
        allocation.update()
        assert consumer.targets[-1] is None and events[-1] == ("cam", "off", DISABLED_BY_SUBSCRIBER)
    finally:
        allocation.close()


async def test_the_dominant_speakers_track_gets_at_least_the_dominant_speaker_priority() -> None:
    clock = Clock()
    dominant: set[str] = set()
    from sfu.media.allocator import SubscriberAllocation

    allocation = SubscriberAllocation(lambda *a: None, lambda *a: None, clock=clock, dominant=lambda: dominant)
    allocation.set_profile(BandwidthProfile(dominant_speaker_priority="high", max_subscription_bitrate=200_000))
    speaker, other = FakeConsumer("speaker", "low", 1), FakeConsumer("other", "standard", 0)
    try:
        for c in (speaker, other):
            allocation.add(c)  # (not measured: 150 kbps each, room for one)
        clock.now += 10.0
        allocation.update()
        assert (speaker.paused, other.paused) == (True, False)
        dominant.add("speaker")  # the room says who speaks: its low track now counts as high
        clock.now += 10.0
        allocation.update()
        clock.now += 10.0
        allocation.update()
        assert (speaker.paused, other.paused) == (False, True)
    finally:
        allocation.close()


async def test_a_top_layer_receiving_nothing_is_not_chosen() -> None:
    class Stream:
        def __init__(self, bitrate: int, width: int) -> None:
            self.bitrate, self.width, self.height = bitrate, width, width * 9 // 16

    layers = [Stream(150_000, 320), Stream(500_000, 640), Stream(0, 1280)]  # the publisher stopped its top layer
    allocation, _ = plumbing(Clock())
    consumer = FakeConsumer("cam", "standard", 0, layers=layers, simulcast=True)
    try:
        allocation.add(consumer)
        allocation.update()
        assert consumer.targets[-1] == 1
        layers[2].bitrate = 1_500_000
        assert [layer.bitrate for layer in allocation.layers(consumer)] == [150_000, 500_000, 1_500_000]
    finally:
        allocation.close()


async def test_an_estimate_at_its_ceiling_lets_the_layers_climb_back_step_by_step() -> None:
    clock = Clock()
    allocation, _ = plumbing(clock)
    layers = [Layer(150_000, 320, 180), Layer(500_000, 640, 360), Layer(1_500_000, 1280, 720)]
    consumer = FakeConsumer("cam", "standard", 0, layers=layers, simulcast=True)
    try:
        allocation.add(consumer)
        consumer.estimate = 100_000  # congested: the lowest layer
        allocation.update()
        assert consumer.targets[-1] == 0
        # Recovered: REMB climbs only to about 1.5x what is received (225 kbps), never 500.
        climbed = []
        for _ in range(6):
            received = layers[consumer.targets[-1]].bitrate
            consumer.estimate = int(1.5 * received) + 10_000
            clock.now += UPGRADE_HOLD + 0.1
            allocation.update()
            clock.now += UPGRADE_HOLD + 0.1
            allocation.update()
            climbed.append(consumer.targets[-1])
        assert climbed[0] == 0 or climbed[0] == 1
        assert climbed[-1] == 2, climbed
        consumer.estimate = 400_000  # congested again (below what the top layer needs): down at once
        allocation.update()
        assert consumer.targets[-1] == 0
    finally:
        allocation.close()
