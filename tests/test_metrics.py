"""GET /metrics: Prometheus text read from the live room model, behind the REST credentials."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DEADLINE, Server, wait_for
from .helpers.clients import Clients


def auth(server: Server) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(server.credentials.api_key_sid, server.credentials.api_key_secret)}


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http}/metrics", headers=auth(server)) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_need_the_rest_credentials(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http}/metrics") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Basic")
        wrong = {"Authorization": aiohttp.encode_basic_auth(server.credentials.api_key_sid, "wrong")}
        async with http.get(f"{server.http}/metrics", headers=wrong) as response:
            assert response.status == 401
        account = {"Authorization": aiohttp.encode_basic_auth(server.credentials.account_sid, server.credentials.auth_token)}
        async with http.get(f"{server.http}/metrics", headers=account) as response:
            assert response.status == 200


async def test_a_call_shows_in_the_metrics_and_counters_never_go_down(server: Server, clients: Clients) -> None:
    before = await scrape(server)
    assert value(before, "sfu_rooms") == 0 and value(before, "sfu_participants") == 0
    assert value(before, "sfu_packets_received_total", kind="video") == 0
    # Process CPU and RSS (prometheus_client's process collector) and the event-loop lag.
    assert value(before, "process_resident_memory_bytes") > 0
    assert ("process_cpu_seconds_total", ()) in before
    assert value(before, "sfu_event_loop_lag_seconds") >= 0

    alice = await clients.join("alice", publish="va")
    bob = await clients.join("bob", publish="")
    reader = await clients.watch(bob, "alice")
    await reader.advance(10)

    during = await scrape(server)
    assert value(during, "sfu_rooms") == 1
    assert value(during, "sfu_participants") == 2
    assert value(during, "sfu_published_tracks", kind="video") == 1
    assert value(during, "sfu_published_tracks", kind="audio") == 1
    assert value(during, "sfu_subscribed_tracks", kind="video") == 1
    assert value(during, "sfu_subscribed_tracks", kind="audio") == 1
    for kind in ("audio", "video"):
        assert value(during, "sfu_packets_received_total", kind=kind) > 0
        assert value(during, "sfu_bytes_received_total", kind=kind) > 0
    video_out = value(during, "sfu_packets_sent_total", kind="video")
    assert video_out > 0 and value(during, "sfu_bytes_sent_total", kind="video") > 0
    for name in ("sfu_nacks_received_total", "sfu_plis_received_total", "sfu_retransmissions_total", "sfu_packets_lost_total"):
        assert value(during, name, kind="video") >= 0
    registry = server.registry
    assert value(during, "sfu_store_pending_records") >= 0
    assert value(during, "sfu_store_write_failures_total") == 0
    assert value(during, "sfu_store_healthy") == 1
    assert value(during, "sfu_signaling_connections", state="authenticated") == 2
    assert value(during, "sfu_signaling_connections", state="unauthenticated") == 0

    # The one media socket carried it all, and nothing was shed (issue 9).
    assert value(during, "sfu_udp_ice_connections") == 2
    assert value(during, "sfu_udp_datagrams_received_total") > value(during, "sfu_packets_received_total", kind="video")
    assert value(during, "sfu_udp_datagrams_sent_total") >= video_out
    assert value(during, "sfu_udp_datagrams_dropped_total", reason="unauthenticated") == 0
    assert value(during, "sfu_overload_level") in (0, 1, 2)
    assert value(during, "sfu_video_consumers_shed_now") == 0
    # The media plane runs in this process: one entry, labelled worker="local".
    assert value(during, "sfu_media_workers") == 1
    assert value(during, "sfu_media_worker_up", worker="local") == 1
    assert value(during, "sfu_media_worker_rooms", worker="local") == 1
    assert value(during, "sfu_media_worker_transports", worker="local") == 2
    assert value(during, "sfu_media_worker_packets_received_total", worker="local") == value(during, "sfu_udp_datagrams_received_total")

    # Packets keep flowing: the counters rise between two scrapes.
    await reader.advance(10)
    later = await scrape(server)
    assert value(later, "sfu_packets_sent_total", kind="video") > video_out
    assert value(later, "sfu_packets_received_total", kind="video") > value(during, "sfu_packets_received_total", kind="video")

    # Everyone leaves: gauges drop to zero, the totals keep what the gone tracks counted.
    sent = value(later, "sfu_packets_sent_total", kind="video")
    received = value(later, "sfu_packets_received_total", kind="video")
    await reader.close()
    clients.readers.remove(reader)
    await alice.disconnect()
    await bob.disconnect()
    await wait_for(lambda: not registry.rooms, DEADLINE, "the room to end")
    after = await scrape(server)
    assert value(after, "sfu_rooms") == 0 and value(after, "sfu_participants") == 0
    assert value(after, "sfu_published_tracks", kind="video") == 0
    assert value(after, "sfu_subscribed_tracks", kind="video") == 0
    assert value(after, "sfu_media_worker_rooms", worker="local") == 0  # the plane let the room's router go
    assert value(after, "sfu_media_worker_transports", worker="local") == 0
    assert value(after, "sfu_packets_sent_total", kind="video") >= sent
    assert value(after, "sfu_packets_received_total", kind="video") >= received


async def test_totals_survive_a_subscriber_leaving_while_the_publisher_stays(server: Server, clients: Clients) -> None:
    """A subscription that ends between scrapes still counts (folded when the model changes)."""
    await clients.join("alice", publish="v")
    bob = await clients.join("bob", publish="")
    reader = await clients.watch(bob, "alice")
    await reader.advance(10)
    sent_while_watching = sum(
        sub.sink.counters.packets for p in next(iter(server.registry.rooms.values())).participants.values()
        for sub in p.subscriptions.values() if sub.track.kind != "data"
    )
    await reader.close()
    clients.readers.remove(reader)
    await bob.disconnect()
    room = next(iter(server.registry.rooms.values()))
    await wait_for(lambda: len(room.participants) == 1, DEADLINE, "bob to leave")
    samples = await scrape(server)
    assert value(samples, "sfu_subscribed_tracks", kind="video") == 0
    assert value(samples, "sfu_packets_sent_total", kind="video") >= sent_while_watching > 0
