"""/v1/Rooms through the official helper library: create, fetch, list, page, complete, auth, errors."""

from __future__ import annotations

import json

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from signaling.client import connect

from .conftest import wait_for
from .rest_support import RestServer, call, helper_client, raw, rest_clients, rest_server, spec  # noqa: F401

RULES = [{"type": "include", "kind": "audio"}, {"type": "exclude", "publisher": "bob"}]


async def rest_error(fn, *args, **kwargs) -> TwilioRestException:  # type: ignore[no-untyped-def]
    with pytest.raises(TwilioRestException) as caught:
        await call(fn, *args, **kwargs)
    return caught.value


async def all_rooms(server: RestServer) -> list[tuple[str, str]]:
    """Every stored room (any status) as (sid, status), read over REST."""
    rooms = []
    for status in ("in-progress", "completed", "failed"):
        _, body = await raw(server.http, server.credentials, "GET", f"/v1/Rooms?Status={status}&PageSize=1000")
        rooms += [(r["sid"], r["status"]) for r in body["rooms"]]
    return sorted(rooms)


async def test_create_with_every_parameter_and_read_it_back(rest_server: RestServer) -> None:
    client = rest_server.client()
    room = await call(
        client.video.v1.rooms.create,
        unique_name="Standup",
        type="group",
        status_callback="http://127.0.0.1:9/events",
        status_callback_method="GET",
        max_participants=7,
        record_participants_on_connect=True,
        transcribe_participants_on_connect=False,
        video_codecs=["H264", "VP8"],
        media_region="de1",
        recording_rules={"rules": RULES},
        transcriptions_configuration={"languageCode": "en-US"},
        audio_only=False,
        max_participant_duration=3600,
        empty_room_timeout=10,
        unused_room_timeout=20,
        large_room=False,
        enable_turn=True,
    )
    assert room.sid.startswith("RM") and room.status == "in-progress"
    assert (room.unique_name, room.type, room.max_participants) == ("Standup", "group", 7)
    assert (room.status_callback, room.status_callback_method) == ("http://127.0.0.1:9/events", "GET")
    assert room.video_codecs == ["H264", "VP8"] and room.media_region == "de1"
    assert room.record_participants_on_connect is True and room.audio_only is False and room.large_room is False
    assert (room.max_participant_duration, room.empty_room_timeout, room.unused_room_timeout) == (3600, 10, 20)
    assert room.end_time is None and room.duration is None and room.enable_turn is True
    assert room.account_sid == rest_server.credentials.account_sid
    assert room.url == f"{rest_server.http}/v1/Rooms/{room.sid}"
    assert room.links["participants"] == f"{room.url}/Participants"
    assert room.links["recording_rules"] == f"{room.url}/RecordingRules"
    by_sid = await call(client.video.v1.rooms(room.sid).fetch)
    by_name = await call(client.video.v1.rooms("Standup").fetch)
    assert by_sid.sid == by_name.sid == room.sid and by_name.video_codecs == ["H264", "VP8"]
    rules = await call(client.video.v1.rooms(room.sid).recording_rules.fetch)
    assert rules.room_sid == room.sid and rules.rules == RULES


@pytest.mark.parametrize(
    ("room_type", "cap"), [("group", 50), ("group-small", 4), ("peer-to-peer", 10), ("go", 2)]
)
async def test_defaults_by_type(rest_server: RestServer, room_type: str, cap: int) -> None:
    room = await call(rest_server.client().video.v1.rooms.create, type=room_type)
    assert room.unique_name == room.sid and room.type == room_type and room.max_participants == cap
    assert (room.max_participant_duration, room.empty_room_timeout, room.unused_room_timeout) == (14400, 5, 5)
    assert room.status_callback is None and room.status_callback_method == "POST"
    assert room.video_codecs is None and room.media_region is None and room.audio_only is False
    assert room.date_created == rest_server.clock.now()


BAD_CREATES = [
    ([("MaxParticipants", "51")], 53107),
    ([("Type", "group-small"), ("MaxParticipants", "5")], 53107),
    ([("Type", "peer-to-peer"), ("MaxParticipants", "11")], 53107),
    ([("MaxParticipants", "0")], 53107),
    ([("MaxParticipants", "ten")], 53107),
    ([("Type", "huge")], 53108),
    ([("EmptyRoomTimeout", "0")], 53109),
    ([("EmptyRoomTimeout", "61")], 53109),
    ([("UnusedRoomTimeout", "1.5")], 53109),
    ([("StatusCallbackMethod", "PUT")], 53110),
    ([("StatusCallback", "not a url")], 53111),
    ([("StatusCallback", "ftp://127.0.0.1/x")], 53111),
    ([("Type", "peer-to-peer"), ("VideoCodecs", "VP8")], 53114),
    ([("Type", "peer-to-peer"), ("MediaRegion", "us1")], 53114),
    ([("Type", "go"), ("RecordParticipantsOnConnect", "true")], 53114),
    ([("MediaRegion", "mars")], 53115),
    ([("AudioOnly", "true"), ("Type", "group-small")], 53124),
    ([("AudioOnly", "true"), ("Type", "peer-to-peer")], 53124),
    ([("MaxParticipantDuration", "599")], 53123),
    ([("MaxParticipantDuration", "86401")], 53123),
    ([("RecordingRules", "[{")], 53120),
    ([("RecordingRules", "[]")], 53120),
    ([("RecordingRules", json.dumps([{"type": "include", "kind": "data"}]))], 53120),
    ([("UniqueName", "")], 53100),
    ([("UniqueName", "x" * 129)], 53101),
    ([("UniqueName", "bad\x01name")], 53102),
    ([("VideoCodecs", "AV1")], 20001),
    ([("AudioOnly", "maybe")], 20001),
    ([("TranscriptionsConfiguration", "[1]")], 20001),
    ([("Type", "group"), ("Type", "go")], 20001),
    ([("Colour", "blue")], 20001),
]


@pytest.mark.parametrize(("form", "code"), BAD_CREATES, ids=[f"{f[-1][0]}={f[-1][1][:12]}" for f, _ in BAD_CREATES])
async def test_invalid_create_is_refused_and_creates_nothing(rest_server: RestServer, form: list[tuple[str, str]], code: int) -> None:
    before = await all_rooms(rest_server)
    status, body = await raw(rest_server.http, rest_server.credentials, "POST", "/v1/Rooms", data=form)
    assert (status, body["code"]) == (400, code), body
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert await all_rooms(rest_server) == before


async def test_unique_name_is_unique_among_in_progress_rooms(rest_server: RestServer) -> None:
    rooms = rest_server.client().video.v1.rooms
    first = await call(rooms.create, unique_name="standup")
    error = await rest_error(rooms.create, unique_name="standup")
    assert (error.status, error.code) == (400, 53113)
    done = await call(rooms(first.sid).update, status="completed")
    assert done.status == "completed"
    second = await call(rooms.create, unique_name="standup")
    assert second.sid != first.sid
    assert (await call(rooms("standup").fetch)).sid == second.sid  # a name finds the in-progress room
    assert (await call(rooms(first.sid).fetch)).status == "completed"  # a SID finds any room
    await call(rooms(second.sid).update, status="completed")
    error = await rest_error(rooms("standup").fetch)
    assert (error.status, error.code) == (404, 20404)


async def test_list_filters(rest_server: RestServer) -> None:
    rooms = rest_server.client().video.v1.rooms
    clock = rest_server.clock
    old = await call(rooms.create, unique_name="old", unused_room_timeout=60)
    clock.advance(600)
    middle = clock.now()
    done = await call(rooms.create, unique_name="done")
    await call(rooms(done.sid).update, status="completed")
    clock.advance(600)
    new = await call(rooms.create, unique_name="new")
    assert [r.sid for r in await call(rooms.list)] == [new.sid, old.sid]  # default: in-progress, newest first
    assert [r.sid for r in await call(rooms.list, status="completed")] == [done.sid]
    assert [r.sid for r in await call(rooms.list, unique_name="old")] == [old.sid]
    assert [r.sid for r in await call(rooms.list, date_created_after=middle)] == [new.sid]
    assert [r.sid for r in await call(rooms.list, date_created_before=middle)] == [old.sid]
    assert await call(rooms.list, status="failed") == []
    for bad, code in (("Status=ended", 53112), ("DateCreatedAfter=yesterday", 20001), ("Colour=red", 20001)):
        status, body = await raw(rest_server.http, rest_server.credentials, "GET", f"/v1/Rooms?{bad}")
        assert (status, body["code"]) == (400, code)


async def test_paging_returns_every_room_once_while_rooms_are_created(rest_server: RestServer) -> None:
    client = rest_server.client()
    rooms = client.video.v1.rooms
    created = []
    for i in range(120):
        created.append((await call(rooms.create, unique_name=f"room-{i}")).sid)
        rest_server.clock.advance(1)
    listed = [r.sid for r in await call(rooms.list, page_size=50)]  # the helper follows next_page_url
    assert listed == created[::-1]

    seen: list[str] = []
    page = await call(rooms.page, page_size=50)
    pages = [page]
    while page is not None:
        seen += [r.sid for r in page]
        for _ in range(7):  # new rooms sort before the first page: paging must not repeat or skip
            await call(rooms.create)
            rest_server.clock.advance(1)
        page = await call(page.next_page)
        if page is not None:
            pages.append(page)
    assert len(pages) == 3 and seen == created[::-1]
    back = await call(pages[1].previous_page)
    assert [r.sid for r in back] == created[::-1][:50]
    assert pages[0].previous_page_url is None and pages[2].next_page_url is None
    assert pages[1].next_page_url.startswith(f"{rest_server.http}/v1/Rooms?PageSize=50&Page=2&PageToken=")

    for bad in ("PageSize=0", "PageSize=1001", "PageSize=x", "Page=-1", "PageToken=nonsense"):
        status, body = await raw(rest_server.http, rest_server.credentials, "GET", f"/v1/Rooms?{bad}")
        assert (status, body["code"]) == (400, 20001), bad


async def test_completing_a_room_disconnects_every_participant_at_once(rest_server: RestServer) -> None:
    rooms = rest_server.client().video.v1.rooms
    room = await call(rooms.create, unique_name="meeting")
    alice = await connect(rest_server.url, rest_server.token("alice"), name="meeting")
    bob = await connect(rest_server.url, rest_server.token("bob"), name="meeting")
    gone: dict[str, object] = {}
    for client in (alice, bob):
        client.on("disconnected", lambda error, c=client: gone.setdefault(c.local_participant.identity, error))
    try:
        assert alice.sid == bob.sid == room.sid  # ad-hoc connections land in the REST room
        done = await call(rooms("meeting").update, status="completed")
        assert done.status == "completed" and done.end_time is not None and done.duration == 0
        await wait_for(lambda: len(gone) == 2, message="both participants disconnected")
        assert {getattr(e, "code", None) for e in gone.values()} == {53118}
        participants = await call(rooms(room.sid).participants.list)
        assert {(p.identity, p.status) for p in participants} == {("alice", "disconnected"), ("bob", "disconnected")}
        for form in ("completed", "in-progress"):
            error = await rest_error(rooms(room.sid).update, status=form)
            assert (error.status, error.code) == (400, 53112)
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_basic_auth_with_account_or_api_key(rest_server: RestServer) -> None:
    creds = rest_server.credentials
    room = await call(rest_server.client().video.v1.rooms.create)
    with_key = Client(creds.api_key_sid, creds.api_key_secret, creds.account_sid, http_client=helper_client(rest_server.http, "x", "y").http_client)
    with_key.video.base_url = rest_server.http
    assert (await call(with_key.video.v1.rooms(room.sid).fetch)).sid == room.sid
    for username, password in (
        (creds.account_sid, "wrong"),
        (creds.api_key_sid, creds.auth_token),
        (creds.account_sid, creds.api_key_secret),
        ("", ""),
    ):
        error = await rest_error(helper_client(rest_server.http, username, password).video.v1.rooms(room.sid).fetch)
        assert (error.status, error.code) == (401, 20003)
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic !!!"}):
        status, body = await raw(rest_server.http, None, "GET", "/v1/Rooms", headers=headers)
        assert (status, body["code"]) == (401, 20003)
    status, body = await raw(rest_server.http, None, "GET", "/v1/Nowhere")
    assert (status, body["code"]) == (401, 20003)  # no hint about which paths exist


async def test_errors_are_twilio_json_with_the_right_status(rest_server: RestServer) -> None:
    http, creds = rest_server.http, rest_server.credentials
    room = await call(rest_server.client().video.v1.rooms.create)
    cases = [
        ("GET", "/v1/Nowhere", {}, 404, 20404),
        ("GET", "/v1/Rooms/RM" + "0" * 32, {}, 404, 20404),
        ("GET", "/v1/Rooms/no-such-name/Participants", {}, 404, 20404),
        ("GET", f"/v1/Rooms/{room.sid}/Participants/PA" + "0" * 32, {}, 404, 20404),
        ("DELETE", "/v1/Rooms", {}, 405, 20004),
        ("PUT", f"/v1/Rooms/{room.sid}", {}, 405, 20004),
        ("POST", "/v1/Rooms", {"data": "UniqueName=" + "x" * 70000, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 413, 20001),
        ("POST", "/v1/Rooms", {"json": {"UniqueName": "x"}}, 415, 20001),
        ("POST", "/v1/Rooms", {"data": b"UniqueName=%ff%fe", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 400, 20001),
        ("POST", f"/v1/Rooms/{room.sid}", {"data": {}}, 400, 53112),
        ("POST", f"/v1/Rooms/{room.sid}", {"data": {"Status": "completed", "Extra": "1"}}, 400, 20001),
    ]
    for method, path, kwargs, want_status, want_code in cases:
        status, body = await raw(http, creds, method, path, **kwargs)
        assert (status, body["code"]) == (want_status, want_code), (method, path, body)
        assert set(body) == {"code", "message", "more_info", "status"} and body["status"] == status
    assert (await call(rest_server.client().video.v1.rooms(room.sid).fetch)).status == "in-progress"


def test_the_spec_validator_rejects_what_breaks_the_schema() -> None:
    """The checks every other test relies on can fail."""
    room = {"sid": "RM" + "a" * 32, "status": "in-progress"}
    with pytest.raises(Exception):
        spec().check("GET", "http://h/v1/Rooms/RMx", 200, json.dumps(room))  # fields missing
    with pytest.raises(AssertionError):
        spec().check("GET", "http://h/v1/Rooms/RMx", 404, json.dumps({"code": 20404, "message": "x", "status": 404}))
    with pytest.raises(AssertionError):
        spec().check("GET", "http://h/v1/Rooms", 201, json.dumps({}))
