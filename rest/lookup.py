"""Finding the room, participant and live objects a URL names."""

from __future__ import annotations

from aiohttp import web

from sfu import sids
from sfu.participant import Participant
from sfu.store import ParticipantRecord, RoomRecord

from .context import RestApi
from .errors import not_found
from .representations import participant_path, room_path


async def find_room(api: RestApi, sid_or_name: str) -> RoomRecord:
    """A room by SID (any status) or by UniqueName (in-progress rooms only)."""
    store = await api.settled()
    record = await store.get_room(sid_or_name) if sids.is_sid(sid_or_name, sids.ROOM) else None
    if record is None:
        live = api.registry.find_in_progress(sid_or_name)
        record = await store.get_room(live.sid) if live is not None else None
    if record is None:
        raise not_found(room_path(sid_or_name))
    return record


def live_participant(api: RestApi, room_sid: str, sid_or_identity: str) -> Participant | None:
    """The participant as it is connected right now, if it is."""
    room = api.registry.get(room_sid)
    return room.find_participant(sid_or_identity) if room is not None else None


async def find_participant(api: RestApi, request: web.Request) -> tuple[RoomRecord, ParticipantRecord]:
    """The room and participant a URL names: participant by SID, or by identity while connected."""
    room = await find_room(api, request.match_info["room"])
    key = request.match_info["participant"]
    store = await api.settled()
    record = None
    if sids.is_sid(key, sids.PARTICIPANT):
        record = await store.get_participant(room.sid, key)
    else:
        live = live_participant(api, room.sid, key)
        record = await store.get_participant(room.sid, live.sid) if live is not None else None
    if record is None:
        raise not_found(participant_path(room.sid, key))
    return room, record
