"""SqliteStore against real files: round trips, filters, keyset paging, restart recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest

from sfu.store import (
    ConflictError,
    ParticipantRecord,
    PublishedTrackRecord,
    RecordingRulesRecord,
    RoomRecord,
    SqliteStore,
    StoreError,
    SubscribeRulesRecord,
)

ACCOUNT = "AC" + "0" * 32
T0 = datetime(2024, 5, 17, 9, 30, 0, 123456, tzinfo=timezone.utc)


def sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def make_room(**overrides) -> RoomRecord:
    fields = dict(
        sid=sid("RM"),
        account_sid=ACCOUNT,
        unique_name="DailyStandup",
        status="in-progress",
        type="group",
        date_created=T0,
        date_updated=T0,
        max_participants=50,
        max_participant_duration=14400,
        empty_room_timeout=5,
        unused_room_timeout=5,
    )
    fields.update(overrides)
    return RoomRecord(**fields)


def make_participant(room: RoomRecord, **overrides) -> ParticipantRecord:
    fields = dict(
        sid=sid("PA"),
        room_sid=room.sid,
        account_sid=ACCOUNT,
        identity="alice",
        status="connected",
        date_created=T0,
        date_updated=T0,
        start_time=T0,
    )
    fields.update(overrides)
    return ParticipantRecord(**fields)


def make_track(p: ParticipantRecord, **overrides) -> PublishedTrackRecord:
    fields = dict(
        sid=sid("MT"),
        participant_sid=p.sid,
        room_sid=p.room_sid,
        name="camera",
        kind="video",
        date_created=T0,
        date_updated=T0,
    )
    fields.update(overrides)
    return PublishedTrackRecord(**fields)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "sfu.sqlite3"


@pytest.fixture
async def store(db_path):
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()


async def reopen(s: SqliteStore) -> SqliteStore:
    await s.close()
    fresh = SqliteStore(s.path)
    await fresh.open()
    return fresh


# --------------------------------------------------------------------------- round trips


def full_room() -> RoomRecord:
    return make_room(
        unique_name="Réunion 会议 🎥",
        status="completed",
        type="group-small",
        date_created=T0,
        date_updated=T0 + timedelta(seconds=5, microseconds=1),
        max_participants=4,
        max_participant_duration=86400,
        max_concurrent_published_tracks=170,
        empty_room_timeout=60,
        unused_room_timeout=1,
        record_participants_on_connect=True,
        audio_only=True,
        video_codecs=["VP8", "H264"],
        media_region="de1",
        status_callback="https://example.com/cb?x=1&y=ü",
        status_callback_method="GET",
        enable_turn=False,
        large_room=True,
        created_via_rest=True,
        end_time=T0 + timedelta(hours=1),
        duration=3600,
    )


def sparse_room() -> RoomRecord:
    return make_room(
        unique_name=None,
        type="peer-to-peer",
        max_participants=10,
        max_concurrent_published_tracks=None,
        video_codecs=None,
        media_region=None,
        status_callback=None,
        end_time=None,
        duration=None,
    )


def test_full_room_sets_every_field_away_from_its_default():
    # Guards the round-trip test: if a field is added to RoomRecord, this fails until
    # full_room() (and so the round trip) covers it with a non-default value.
    default, full = make_room(), full_room()
    same = [
        f.name
        for f in dataclasses.fields(RoomRecord)
        if getattr(default, f.name) == getattr(full, f.name)
    ]
    assert same == ["account_sid", "date_created"]


async def test_room_round_trip_every_field(store):
    for room in (full_room(), sparse_room()):
        await store.put_room(room)
        got = await store.get_room(room.sid)
        assert got == room
        for f in dataclasses.fields(RoomRecord):
            assert type(getattr(got, f.name)) is type(getattr(room, f.name)), f.name
        assert got.date_created.tzinfo is not None
        assert got.date_created.utcoffset() == timedelta(0)


async def test_participant_track_and_rules_round_trip(store):
    room = make_room()
    await store.put_room(room)

    full = make_participant(
        room,
        identity="Zoë 山田 👩‍💻",
        status="disconnected",
        date_updated=T0 + timedelta(seconds=90),
        start_time=T0 + timedelta(seconds=1),
        end_time=T0 + timedelta(seconds=91),
        duration=90,
    )
    sparse = make_participant(room, identity="bob", start_time=None, end_time=None, duration=None)
    for p in (full, sparse):
        await store.put_participant(p)
        assert await store.get_participant(room.sid, p.sid) == p

    for t in (
        make_track(
            full,
            name="микрофон 🎤",
            kind="audio",
            enabled=False,
            status="unpublished",
            date_updated=T0 + timedelta(milliseconds=3),
        ),
        make_track(full, name="chat", kind="data"),
        make_track(full, name="camera", kind="video"),
    ):
        await store.put_track(t)
        got = await store.get_track(full.sid, t.sid)
        assert got == t
        assert type(got.enabled) is bool

    sub = SubscribeRulesRecord(
        participant_sid=full.sid,
        room_sid=room.sid,
        date_created=T0,
        date_updated=T0 + timedelta(seconds=2),
        rules=[
            {"type": "include", "all": True},
            {"type": "exclude", "publisher": "Zoë", "kind": "video", "priority": "high"},
            {"type": "include", "track": "screen", "nested": {"a": [1, 2.5, None]}},
        ],
    )
    await store.put_subscribe_rules(sub)
    assert await store.get_subscribe_rules(full.sid) == sub

    empty_sub = SubscribeRulesRecord(participant_sid=sparse.sid, room_sid=room.sid,
                                     date_created=T0, date_updated=T0, rules=[])
    await store.put_subscribe_rules(empty_sub)
    assert await store.get_subscribe_rules(sparse.sid) == empty_sub

    rec = RecordingRulesRecord(
        room_sid=room.sid,
        date_created=T0,
        date_updated=T0 + timedelta(minutes=1),
        rules=[{"type": "exclude", "all": True}, {"type": "include", "kind": "audio"}],
    )
    await store.put_recording_rules(rec)
    assert await store.get_recording_rules(room.sid) == rec


async def test_missing_and_mismatched_lookups_return_none(store):
    room = make_room()
    other = make_room(unique_name="other")
    await store.put_room(room)
    await store.put_room(other)
    p = make_participant(room)
    await store.put_participant(p)
    t = make_track(p)
    await store.put_track(t)

    assert await store.get_room(sid("RM")) is None
    assert await store.get_participant(room.sid, sid("PA")) is None
    assert await store.get_participant(other.sid, p.sid) is None  # wrong room
    assert await store.get_track(sid("PA"), t.sid) is None  # wrong participant
    assert await store.get_subscribe_rules(p.sid) is None
    assert await store.get_recording_rules(room.sid) is None


async def test_put_is_an_upsert(store):
    room = make_room()
    await store.put_room(room)
    later = T0 + timedelta(minutes=3)
    done = dataclasses.replace(room, status="completed", end_time=later, duration=180,
                               date_updated=later, video_codecs=["H264"])
    await store.put_room(done)
    assert await store.get_room(room.sid) == done
    assert len(await store.list_rooms()) == 1

    p = make_participant(room)
    await store.put_participant(p)
    await store.put_participant(dataclasses.replace(p, status="disconnected", duration=7))
    assert (await store.get_participant(room.sid, p.sid)).duration == 7

    t = make_track(p)
    await store.put_track(t)
    await store.put_track(dataclasses.replace(t, enabled=False))
    assert (await store.get_track(p.sid, t.sid)).enabled is False


async def test_datetimes_are_normalised_to_utc_and_naive_ones_rejected(store):
    plus2 = timezone(timedelta(hours=2))
    room = make_room(date_created=datetime(2024, 1, 1, 12, 0, tzinfo=plus2),
                     date_updated=datetime(2024, 1, 1, 12, 0, tzinfo=plus2))
    await store.put_room(room)
    got = await store.get_room(room.sid)
    assert got.date_created == datetime(2024, 1, 1, 10, 0, tzinfo=timezone.utc)
    assert got.date_created.tzinfo == timezone.utc

    with pytest.raises(ValueError):
        await store.put_room(make_room(date_created=datetime(2024, 1, 1)))
    with pytest.raises(ValueError):
        await store.list_rooms(created_after=datetime(2024, 1, 1))


async def test_raw_encoding_is_portable_text_ints_and_json(store, db_path):
    room = make_room(
        date_created=datetime(2024, 1, 1, tzinfo=timezone.utc),
        audio_only=True,
        video_codecs=["VP8"],
    )
    await store.put_room(room)
    with closing(sqlite3.connect(db_path)) as raw:
        row = raw.execute(
            "SELECT date_created, audio_only, large_room, video_codecs, media_region"
            " FROM rooms WHERE sid = ?",
            (room.sid,),
        ).fetchone()
    assert row == ("2024-01-01T00:00:00.000000Z", 1, 0, '["VP8"]', None)


async def test_integrity_errors(store):
    room = make_room()
    with pytest.raises(StoreError):  # unknown room
        await store.put_participant(make_participant(room))
    await store.put_room(room)
    with pytest.raises(StoreError):  # unknown participant
        await store.put_track(make_track(make_participant(room)))
    with pytest.raises(ValueError):
        await store.list_rooms(limit=0)


async def test_not_open_raises(db_path):
    s = SqliteStore(db_path)
    with pytest.raises(StoreError):
        await s.get_room("RMx")
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.put_room(make_room())


# --------------------------------------------------------------------------- in-progress names


async def test_find_in_progress_room_only_finds_in_progress(store):
    done = make_room(unique_name="standup", status="completed", end_time=T0, duration=0)
    failed = make_room(unique_name="standup", status="failed")
    await store.put_room(done)
    await store.put_room(failed)
    assert await store.find_in_progress_room("standup") is None

    live = make_room(unique_name="standup", date_created=T0 + timedelta(hours=1))
    await store.put_room(live)
    assert (await store.find_in_progress_room("standup")).sid == live.sid
    assert await store.find_in_progress_room("Standup") is None  # exact match
    assert await store.find_in_progress_room(live.sid) is None  # a name, not a sid

    await store.put_room(dataclasses.replace(live, status="completed"))
    assert await store.find_in_progress_room("standup") is None


async def test_two_in_progress_rooms_cannot_share_a_unique_name(store):
    first = make_room(unique_name="standup")
    await store.put_room(first)
    with pytest.raises(ConflictError):
        await store.put_room(make_room(unique_name="standup"))
    # Once the first is completed, the name is free again.
    await store.put_room(dataclasses.replace(first, status="completed"))
    await store.put_room(make_room(unique_name="standup"))
    # Rooms without a unique_name never conflict.
    await store.put_room(make_room(unique_name=None))
    await store.put_room(make_room(unique_name=None))


# --------------------------------------------------------------------------- lists


def room_key(r: RoomRecord) -> tuple[datetime, str]:
    return (r.date_created, r.sid)


async def page_all(fetch, limit, between_pages=None):
    seen, after, pages = [], None, 0
    while True:
        page = await fetch(limit=limit, after=after)
        assert len(page) <= limit
        seen.extend(page)
        pages += 1
        if len(page) < limit:
            return seen, pages
        after = (page[-1].date_created, page[-1].sid)
        if between_pages:
            await between_pages(pages)


async def seed_rooms(store, n=120):
    rooms = []
    for i in range(n):
        # Groups of 4 share a timestamp; groups are 1 µs apart (text order must follow).
        created = T0 + timedelta(microseconds=i // 4)
        rooms.append(make_room(unique_name=f"room-{i}", date_created=created, date_updated=created))
    for r in rooms:
        await store.put_room(r)
    return rooms


async def test_keyset_paging_returns_each_room_once_in_order(store):
    rooms = await seed_rooms(store)
    expected = sorted(rooms, key=room_key, reverse=True)

    seen, pages = await page_all(store.list_rooms, 50)
    assert pages == 3
    assert [r.sid for r in seen] == [r.sid for r in expected]

    # Page boundaries that fall inside a group of equal timestamps.
    for limit in (1, 3, 7, 120, 1000):
        seen, _ = await page_all(store.list_rooms, limit)
        assert [r.sid for r in seen] == [r.sid for r in expected], limit


async def test_keyset_paging_is_stable_while_rooms_are_created(store):
    rooms = await seed_rooms(store)
    expected = [r.sid for r in sorted(rooms, key=room_key, reverse=True)]
    newcomers = []

    async def create_more(page_no):
        # New rooms are newest (Twilio lists newest first), plus some sharing the oldest
        # timestamp seen so far, so they land on both sides of the cursor.
        for j in range(10):
            created = T0 + timedelta(days=1, microseconds=page_no * 100 + j)
            r = make_room(unique_name=None, date_created=created, date_updated=created)
            newcomers.append(r)
            await store.put_room(r)
        r = make_room(unique_name=None, date_created=T0, date_updated=T0)
        newcomers.append(r)
        await store.put_room(r)

    seen, _ = await page_all(store.list_rooms, 50, between_pages=create_more)
    seen_sids = [r.sid for r in seen]
    assert len(seen_sids) == len(set(seen_sids)), "a room was returned twice"
    original = set(expected)
    assert [s for s in seen_sids if s in original] == expected
    # Everything returned is in (date_created DESC, sid DESC) order.
    keys = [room_key(r) for r in seen]
    assert keys == sorted(keys, reverse=True)
    assert newcomers  # the callback did run


async def test_list_rooms_filters(store):
    a = make_room(unique_name="a", date_created=T0, date_updated=T0)
    b = make_room(unique_name="b", date_created=T0 + timedelta(days=1),
                  date_updated=T0 + timedelta(days=1), status="completed")
    c = make_room(unique_name="a", date_created=T0 + timedelta(days=2),
                  date_updated=T0 + timedelta(days=2), status="completed")
    d = make_room(unique_name="d", date_created=T0 + timedelta(days=3),
                  date_updated=T0 + timedelta(days=3), status="failed")
    for r in (a, b, c, d):
        await store.put_room(r)

    async def sids(**kw):
        return [r.sid for r in await store.list_rooms(**kw)]

    assert await sids() == [d.sid, c.sid, b.sid, a.sid]
    assert await sids(status="in-progress") == [a.sid]
    assert await sids(status="completed") == [c.sid, b.sid]
    assert await sids(unique_name="a") == [c.sid, a.sid]
    assert await sids(unique_name="a", status="completed") == [c.sid]
    assert await sids(unique_name="zzz") == []
    # created_after is inclusive, created_before exclusive.
    assert await sids(created_after=b.date_created) == [d.sid, c.sid, b.sid]
    assert await sids(created_before=c.date_created) == [b.sid, a.sid]
    assert await sids(created_after=b.date_created, created_before=d.date_created) == [c.sid, b.sid]
    assert await sids(limit=2) == [d.sid, c.sid]
    assert await sids(limit=2, after=(c.date_created, c.sid)) == [b.sid, a.sid]


async def test_list_participants_filters_and_paging(store):
    room, other = make_room(unique_name="r1"), make_room(unique_name="r2")
    await store.put_room(room)
    await store.put_room(other)
    ps = []
    for i in range(30):
        created = T0 + timedelta(seconds=i // 3)
        ps.append(make_participant(
            room,
            identity="alice" if i % 2 else "bob",
            status="disconnected" if i % 5 == 0 else "connected",
            date_created=created,
            date_updated=created,
        ))
    for p in ps:
        await store.put_participant(p)
    await store.put_participant(make_participant(other, identity="alice"))

    def expected(pred=lambda p: True):
        return [p.sid for p in sorted(ps, key=room_key, reverse=True) if pred(p)]

    async def sids(**kw):
        return [p.sid for p in await store.list_participants(room.sid, **kw)]

    assert await sids(limit=100) == expected()
    assert await sids(status="connected", limit=100) == expected(lambda p: p.status == "connected")
    assert await sids(identity="alice", limit=100) == expected(lambda p: p.identity == "alice")
    assert await sids(identity="alice", status="disconnected", limit=100) == expected(
        lambda p: p.identity == "alice" and p.status == "disconnected")
    t5 = T0 + timedelta(seconds=5)
    assert await sids(created_after=t5, limit=100) == expected(lambda p: p.date_created >= t5)
    assert await sids(created_before=t5, limit=100) == expected(lambda p: p.date_created < t5)
    assert await store.list_participants(sid("RM")) == []

    seen, pages = await page_all(lambda **kw: store.list_participants(room.sid, **kw), 7)
    assert [p.sid for p in seen] == expected()
    assert pages == 5


async def test_list_tracks_filters_and_paging(store):
    room = make_room()
    await store.put_room(room)
    p, q = make_participant(room), make_participant(room, identity="bob")
    await store.put_participant(p)
    await store.put_participant(q)
    ts = [
        make_track(p, name=f"t{i}", status="unpublished" if i % 4 == 0 else "published",
                   date_created=T0 + timedelta(milliseconds=i // 2))
        for i in range(11)
    ]
    for t in ts:
        await store.put_track(t)
    await store.put_track(make_track(q))

    ordered = sorted(ts, key=room_key, reverse=True)
    seen, _ = await page_all(lambda **kw: store.list_tracks(p.sid, **kw), 4)
    assert [t.sid for t in seen] == [t.sid for t in ordered]
    assert [t.sid for t in await store.list_tracks(p.sid, status="published")] == [
        t.sid for t in ordered if t.status == "published"]
    assert len(await store.list_tracks(q.sid)) == 1


# --------------------------------------------------------------------------- restart


async def test_data_survives_close_and_reopen(store):
    room = full_room()
    await store.put_room(room)
    p = make_participant(room, identity="ünïcode")
    await store.put_participant(p)
    t = make_track(p)
    await store.put_track(t)
    sub = SubscribeRulesRecord(p.sid, room.sid, T0, T0, [{"type": "include", "all": True}])
    await store.put_subscribe_rules(sub)
    rec = RecordingRulesRecord(room.sid, T0, T0, [{"type": "include", "all": True}])
    await store.put_recording_rules(rec)

    store2 = await reopen(store)
    try:
        assert await store2.get_room(room.sid) == room
        assert await store2.get_participant(room.sid, p.sid) == p
        assert await store2.get_track(p.sid, t.sid) == t
        assert await store2.get_subscribe_rules(p.sid) == sub
        assert await store2.get_recording_rules(room.sid) == rec
    finally:
        await store2.close()


async def test_writes_are_committed_when_put_returns(store, db_path):
    room = make_room()
    await store.put_room(room)
    # An independent connection (another process, in effect) sees the row at once.
    with closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("SELECT status FROM rooms WHERE sid = ?", (room.sid,)).fetchone() == (
            "in-progress",)


async def test_end_in_progress_rooms_after_restart(store):
    live = make_room(unique_name="live", date_created=T0, date_updated=T0)
    live2 = make_room(unique_name="live2", date_created=T0 + timedelta(minutes=10),
                      date_updated=T0 + timedelta(minutes=10))
    done_end = T0 + timedelta(minutes=1)
    done = make_room(unique_name="done", status="completed", end_time=done_end, duration=60,
                     date_updated=done_end)
    for r in (live, live2, done):
        await store.put_room(r)

    alice = make_participant(live, identity="alice", start_time=T0 + timedelta(seconds=30))
    recon = make_participant(live, identity="carol", status="reconnecting",
                             start_time=T0 + timedelta(seconds=40))
    left_end = T0 + timedelta(seconds=50)
    left = make_participant(live, identity="bob", status="disconnected",
                            start_time=T0, end_time=left_end, duration=50, date_updated=left_end)
    nostart = make_participant(live2, identity="dave", start_time=None,
                               date_created=T0 + timedelta(minutes=11))
    old = make_participant(done, identity="erin", status="disconnected", end_time=done_end,
                           duration=60, date_updated=done_end)
    for p in (alice, recon, left, nostart, old):
        await store.put_participant(p)
    cam = make_track(alice)
    gone = make_track(alice, name="old", status="unpublished")
    await store.put_track(cam)
    await store.put_track(gone)

    store = await reopen(store)  # the "crash": a new process opens the same file
    try:
        now = T0 + timedelta(hours=1, seconds=0.9)
        ended = await store.end_in_progress_rooms(now)
        assert sorted(ended) == sorted([live.sid, live2.sid])

        r = await store.get_room(live.sid)
        assert (r.status, r.end_time, r.duration, r.date_updated) == ("completed", now, 3600, now)
        r2 = await store.get_room(live2.sid)
        assert (r2.status, r2.end_time, r2.duration) == ("completed", now, 3000)
        assert await store.get_room(done.sid) == done  # untouched
        assert await store.find_in_progress_room("live") is None
        assert await store.list_rooms(status="in-progress") == []

        a = await store.get_participant(live.sid, alice.sid)
        assert (a.status, a.end_time, a.duration) == ("disconnected", now, 3570)
        assert a.date_updated == now
        c = await store.get_participant(live.sid, recon.sid)
        assert (c.status, c.end_time, c.duration) == ("disconnected", now, 3560)
        d = await store.get_participant(live2.sid, nostart.sid)  # falls back to date_created
        assert (d.status, d.end_time, d.duration) == ("disconnected", now, 2940)
        assert await store.get_participant(live.sid, left.sid) == left  # untouched
        assert await store.get_participant(done.sid, old.sid) == old
        assert await store.list_participants(live.sid, status="connected") == []

        t = await store.get_track(alice.sid, cam.sid)
        assert (t.status, t.date_updated) == ("unpublished", now)
        assert await store.get_track(alice.sid, gone.sid) == gone

        assert await store.end_in_progress_rooms(now + timedelta(seconds=1)) == []
    finally:
        await store.close()

    store3 = SqliteStore(store.path)  # and the result is itself durable
    await store3.open()
    try:
        assert (await store3.get_room(live.sid)).status == "completed"
    finally:
        await store3.close()


# --------------------------------------------------------------------------- the file


async def test_file_is_wal_with_schema_version(store, db_path):
    await store.put_room(make_room())
    assert db_path.exists()
    assert db_path.with_name(db_path.name + "-wal").exists()
    with closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]


async def test_reopen_does_not_rerun_migrations(store, db_path):
    store2 = await reopen(store)
    await store2.close()
    with closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]


async def test_refuses_a_newer_schema(store, db_path):
    await store.close()
    with closing(sqlite3.connect(db_path)) as raw:
        raw.execute("UPDATE schema_version SET version = 999")
        raw.commit()
    s = SqliteStore(db_path)
    with pytest.raises(StoreError):
        await s.open()


async def test_slow_disk_does_not_block_the_event_loop(store, db_path):
    # Another connection holds the write lock; our put waits on it (busy_timeout) in the
    # worker thread while the loop keeps ticking.
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        put = asyncio.create_task(store.put_room(make_room()))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20
        assert not put.done()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.wait_for(put, 5)
    assert len(await store.list_rooms()) == 1


async def test_concurrent_writes_from_many_tasks(store):
    rooms = [make_room(unique_name=f"r{i}") for i in range(200)]
    await asyncio.gather(*(store.put_room(r) for r in rooms))
    assert len(await store.list_rooms(limit=1000)) == 200
