"""``/v1/Rooms``: create, list, fetch (by SID or in-progress UniqueName) and complete rooms."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from yarl import URL

from sfu.errors import (
    AUDIO_ONLY_INVALID,
    CALLBACK_INVALID,
    CALLBACK_METHOD_INVALID,
    INCOMPATIBLE_WITH_TYPE,
    MAX_PARTICIPANT_DURATION_INVALID,
    MAX_PARTICIPANTS_INVALID,
    MEDIA_REGION_INVALID,
    RECORDING_RULES_INVALID,
    ROOM_TYPE_INVALID,
    SERVICE_UNAVAILABLE,
    STATUS_INVALID,
    TIMEOUT_INVALID,
)
from sfu.participant import ParticipantError
from sfu.room import ROOM_TYPES, RoomSettings
from sfu.store import PageKey, RoomRecord

from . import representations
from .context import RestApi, api_of
from .errors import RestError, invalid, store_unavailable
from .lookup import find_room
from .paging import PAGING_PARAMS, page_request, page_response
from .params import Params, form, query
from .representations import base_url
from .rules import validate_recording_rules

ROOM_STATUSES = ("in-progress", "completed", "failed")
VIDEO_CODECS = ("VP8", "H264")
MEDIA_REGIONS = ("us1", "us2", "ie1", "de1", "au1", "br1", "jp1", "sg1", "in1", "gll")
PEER_TO_PEER = ("peer-to-peer", "go")


CREATE_PARAMS = (
    "EnableTurn", "Type", "UniqueName", "StatusCallback", "StatusCallbackMethod", "MaxParticipants",
    "RecordParticipantsOnConnect", "TranscribeParticipantsOnConnect", "VideoCodecs", "MediaRegion",
    "RecordingRules", "TranscriptionsConfiguration", "AudioOnly", "MaxParticipantDuration",
    "EmptyRoomTimeout", "UnusedRoomTimeout", "LargeRoom",
)  # fmt: skip
LIST_PARAMS = ("Status", "UniqueName", "DateCreatedAfter", "DateCreatedBefore", *PAGING_PARAMS)


def _status_callback(params: Params) -> tuple[str | None, str]:
    url = params.text("StatusCallback")
    if url is not None:
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host or len(url) > 2048:
            raise invalid("StatusCallback must be an absolute http(s) URL", CALLBACK_INVALID)
    method = (params.text("StatusCallbackMethod") or "POST").upper()
    if method not in ("GET", "POST"):
        raise invalid("StatusCallbackMethod must be GET or POST", CALLBACK_METHOD_INVALID)
    return url, method


def _video_codecs(params: Params) -> list[str] | None:
    codecs = params.texts("VideoCodecs")
    if not codecs:
        return None
    if any(c not in VIDEO_CODECS for c in codecs):
        raise invalid("VideoCodecs must be VP8 or H264")
    return list(dict.fromkeys(codecs))


def _recording_rules(params: Params) -> list[dict[str, Any]] | None:
    rules = params.json("RecordingRules", RECORDING_RULES_INVALID)
    if rules is None and "RecordingRules" not in params:
        return None
    if isinstance(rules, dict) and set(rules) == {"rules"}:
        rules = rules["rules"]  # {"rules": [...]} as Twilio's examples write it
    return validate_recording_rules(rules)


def room_settings(params: Params) -> tuple[RoomSettings, list[dict[str, Any]] | None]:
    """Validate every create parameter (Twilio's codes) before anything is created."""
    room_type = params.choice("Type", ROOM_TYPES, ROOM_TYPE_INVALID) or "group"
    cap = ROOM_TYPES[room_type]
    max_participants = params.integer("MaxParticipants", 1, cap, MAX_PARTICIPANTS_INVALID) or cap
    duration = params.integer("MaxParticipantDuration", 600, 86400, MAX_PARTICIPANT_DURATION_INVALID)
    empty_timeout = params.integer("EmptyRoomTimeout", 1, 60, TIMEOUT_INVALID)
    unused_timeout = params.integer("UnusedRoomTimeout", 1, 60, TIMEOUT_INVALID)
    callback, method = _status_callback(params)
    record_on_connect = params.boolean("RecordParticipantsOnConnect")
    transcribe_on_connect = params.boolean("TranscribeParticipantsOnConnect")
    audio_only = params.boolean("AudioOnly")
    large_room = params.boolean("LargeRoom")
    params.boolean("EnableTurn")  # deprecated: TURN is always on, but the value must be a boolean
    codecs = _video_codecs(params)
    region = params.choice("MediaRegion", MEDIA_REGIONS, MEDIA_REGION_INVALID)
    transcriptions = params.json("TranscriptionsConfiguration")
    if transcriptions is not None and not isinstance(transcriptions, dict):
        raise invalid("TranscriptionsConfiguration must be a JSON object")
    recording_rules = _recording_rules(params)
    if room_type in PEER_TO_PEER:
        if codecs or region or record_on_connect or recording_rules is not None or large_room:
            raise invalid(
                "MediaRegion, VideoCodecs, RecordParticipantsOnConnect, RecordingRules and LargeRoom "
                "are not supported for peer-to-peer rooms",
                INCOMPATIBLE_WITH_TYPE,
            )
    if audio_only and room_type != "group":
        raise invalid("AudioOnly is only supported for group rooms", AUDIO_ONLY_INVALID)
    defaults = RoomSettings()
    settings = RoomSettings(
        type=room_type,
        max_participants=max_participants,
        max_participant_duration=duration or defaults.max_participant_duration,
        empty_room_timeout=empty_timeout or defaults.empty_room_timeout,
        unused_room_timeout=unused_timeout or defaults.unused_room_timeout,
        audio_only=bool(audio_only),
        video_codecs=codecs,
        media_region=region,
        record_participants_on_connect=bool(record_on_connect),
        status_callback=callback,
        status_callback_method=method,
        large_room=bool(large_room),
        created_via_rest=True,
        extra={"transcribe_participants_on_connect": bool(transcribe_on_connect), "transcriptions_configuration": transcriptions},
    )
    return settings, recording_rules


async def _room_response(request: web.Request, api: RestApi, sid: str, status: int) -> web.Response:
    record = await find_room(api, sid)
    return web.json_response(representations.room(record, base_url(request)), status=status)


async def create_room(request: web.Request) -> web.Response:
    api = api_of(request)
    if api.registry.draining:  # SIGTERM: the rooms in progress go on, no new ones (sfuserver/drain.py)
        raise RestError(503, SERVICE_UNAVAILABLE, "The server is shutting down: create the room on another server")
    params = await form(request, CREATE_PARAMS, repeatable=("VideoCodecs",))
    settings, recording_rules = room_settings(params)
    if not api.registry.records.healthy:
        raise store_unavailable()  # before creating: a room that cannot be stored is not made
    try:
        room = api.registry.create_room(params.text("UniqueName"), settings)
    except ParticipantError as exc:
        raise invalid(exc.message, exc.code) from None
    if recording_rules is not None:
        room.set_recording_rules(recording_rules)
    return await _room_response(request, api, room.sid, 201)  # after the record is committed


async def list_rooms(request: web.Request) -> web.Response:
    api = api_of(request)
    params = query(request, LIST_PARAMS)
    status = params.choice("Status", ROOM_STATUSES, STATUS_INVALID) or "in-progress"
    unique_name = params.text("UniqueName")
    after, before = params.timestamp("DateCreatedAfter"), params.timestamp("DateCreatedBefore")
    page = page_request(params)
    store = await api.settled()

    async def fetch(key: PageKey | None, limit: int) -> list[RoomRecord]:
        return await store.list_rooms(
            status=status, unique_name=unique_name, created_after=after, created_before=before, limit=limit, after=key
        )

    base = base_url(request)
    filters = [(name, value) for name, value in params.items() if name not in PAGING_PARAMS]
    return await page_response(request, base, page, fetch, "rooms", lambda r: representations.room(r, base), filters)


async def fetch_room(request: web.Request) -> web.Response:
    query(request, ())
    return await _room_response(request, api_of(request), request.match_info["room"], 200)


async def update_room(request: web.Request) -> web.Response:
    """``Status=completed`` ends the room and disconnects every participant at once (202)."""
    api = api_of(request)
    params = await form(request, ("Status",))
    status = params.choice("Status", ROOM_STATUSES, STATUS_INVALID)
    if status != "completed":
        raise invalid("Status must be completed", STATUS_INVALID)
    record = await find_room(api, request.match_info["room"])
    live = api.registry.get(record.sid)
    if live is None or not live.in_progress:
        raise invalid("Room is not in-progress", STATUS_INVALID)
    await live.end()
    return await _room_response(request, api, record.sid, 202)
