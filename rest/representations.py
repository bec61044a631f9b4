"""Records as Twilio's JSON: every field of the spec's schema, ``null`` where there is no value,
and ``url`` / ``links`` absolute on the server's own host."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from sfu.store import ParticipantRecord, PublishedTrackRecord, RecordingRulesRecord, RoomRecord, SubscribeRulesRecord

_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def base_url(request: web.Request) -> str:
    """``scheme://host[:port]`` the client reached us at (the socket's address if Host is odd)."""
    host = request.headers.get("Host", "")
    if not _HOST.fullmatch(host):
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host = f"{sockname[0]}:{sockname[1]}" if sockname else "127.0.0.1"
    return f"{request.scheme}://{host}"


def timestamp(value: datetime | None) -> str | None:
    """Twilio's (and its helper library's) date-time format: seconds, UTC, ``Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def room_path(room_sid: str) -> str:
    return f"/v1/Rooms/{room_sid}"


def participant_path(room_sid: str, participant_sid: str) -> str:
    return f"{room_path(room_sid)}/Participants/{participant_sid}"


def room(record: RoomRecord, base: str) -> dict[str, Any]:
    url = base + room_path(record.sid)
    return {
        "sid": record.sid,
        "status": record.status,
        "date_created": timestamp(record.date_created),
        "date_updated": timestamp(record.date_updated),
        "account_sid": record.account_sid,
        "enable_turn": record.enable_turn,
        "unique_name": record.unique_name,
        "status_callback": record.status_callback,
        "status_callback_method": record.status_callback_method,
        "end_time": timestamp(record.end_time),
        "duration": record.duration,
        "type": record.type,
        "max_participants": record.max_participants,
        "max_participant_duration": record.max_participant_duration,
        "max_concurrent_published_tracks": record.max_concurrent_published_tracks,
        "record_participants_on_connect": record.record_participants_on_connect,
        "video_codecs": record.video_codecs,
        "media_region": record.media_region,
        "audio_only": record.audio_only,
        "empty_room_timeout": record.empty_room_timeout,
        "unused_room_timeout": record.unused_room_timeout,
        "large_room": record.large_room,
        "url": url,
        "links": {
            "participants": f"{url}/Participants",
            "recordings": f"{url}/Recordings",
            "transcriptions": f"{url}/Transcriptions",
            "recording_rules": f"{url}/RecordingRules",
        },
    }


def participant(record: ParticipantRecord, base: str) -> dict[str, Any]:
    url = base + participant_path(record.room_sid, record.sid)
    return {
        "sid": record.sid,
        "room_sid": record.room_sid,
        "account_sid": record.account_sid,
        "status": record.status,
        "identity": record.identity,
        "date_created": timestamp(record.date_created),
        "date_updated": timestamp(record.date_updated),
        "start_time": timestamp(record.start_time),
        "end_time": timestamp(record.end_time),
        "duration": record.duration,
        "url": url,
        "links": {
            "published_tracks": f"{url}/PublishedTracks",
            "subscribed_tracks": f"{url}/SubscribedTracks",
            "subscribe_rules": f"{url}/SubscribeRules",
            "anonymize": f"{url}/Anonymize",
        },
    }


def published_track(record: PublishedTrackRecord, base: str) -> dict[str, Any]:
    return {
        "sid": record.sid,
        "participant_sid": record.participant_sid,
        "room_sid": record.room_sid,
        "name": record.name,
        "date_created": timestamp(record.date_created),
        "date_updated": timestamp(record.date_updated),
        "enabled": record.enabled,
        "kind": record.kind,
        "url": f"{base}{participant_path(record.room_sid, record.participant_sid)}/PublishedTracks/{record.sid}",
    }


@dataclass(frozen=True)
class SubscribedTrack:
    """A live subscription as the SubscribedTracks resource sees it."""

    sid: str
    participant_sid: str
    publisher_sid: str
    room_sid: str
    name: str
    kind: str
    enabled: bool
    date_created: datetime
    date_updated: datetime


def subscribed_track(track: SubscribedTrack, base: str) -> dict[str, Any]:
    return {
        "sid": track.sid,
        "participant_sid": track.participant_sid,
        "publisher_sid": track.publisher_sid,
        "room_sid": track.room_sid,
        "name": track.name,
        "date_created": timestamp(track.date_created),
        "date_updated": timestamp(track.date_updated),
        "enabled": track.enabled,
        "kind": track.kind,
        "url": f"{base}{participant_path(track.room_sid, track.participant_sid)}/SubscribedTracks/{track.sid}",
    }


def subscribe_rules(record: SubscribeRulesRecord) -> dict[str, Any]:
    return {
        "participant_sid": record.participant_sid,
        "room_sid": record.room_sid,
        "rules": record.rules,
        "date_created": timestamp(record.date_created),
        "date_updated": timestamp(record.date_updated),
    }


def recording_rules(record: RecordingRulesRecord) -> dict[str, Any]:
    return {
        "room_sid": record.room_sid,
        "rules": record.rules,
        "date_created": timestamp(record.date_created),
        "date_updated": timestamp(record.date_updated),
    }
