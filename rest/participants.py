"""``/v1/Rooms/{Room}/Participants``: list, fetch (by SID or connected identity) and kick."""

from __future__ import annotations

from aiohttp import web

from sfu.errors import PARTICIPANT_NOT_FOUND
from sfu.store import PageKey, ParticipantRecord

from . import representations
from .context import api_of
from .errors import invalid
from .lookup import find_participant, find_room, live_participant
from .paging import PAGING_PARAMS, page_request, page_response
from .params import form, query
from .representations import base_url

PARTICIPANT_STATUSES = ("connected", "disconnected", "reconnecting")
LIST_PARAMS = ("Status", "Identity", "DateCreatedAfter", "DateCreatedBefore", *PAGING_PARAMS)


async def list_participants(request: web.Request) -> web.Response:
    """Twilio's default: connected participants of an in-progress room, all of a completed one."""
    api = api_of(request)
    params = query(request, LIST_PARAMS)
    status = params.choice("Status", PARTICIPANT_STATUSES)
    identity = params.text("Identity")
    after, before = params.timestamp("DateCreatedAfter"), params.timestamp("DateCreatedBefore")
    page = page_request(params)
    room = await find_room(api, request.match_info["room"])
    if status is None and room.status == "in-progress":
        status = "connected"
    store = await api.settled()

    async def fetch(key: PageKey | None, limit: int) -> list[ParticipantRecord]:
        return await store.list_participants(
            room.sid, status=status, identity=identity, created_after=after, created_before=before, limit=limit, after=key
        )

    base = base_url(request)
    filters = [(name, value) for name, value in params.items() if name not in PAGING_PARAMS]
    return await page_response(
        request, base, page, fetch, "participants", lambda r: representations.participant(r, base), filters
    )


async def fetch_participant(request: web.Request) -> web.Response:
    query(request, ())
    _, record = await find_participant(api_of(request), request)
    return web.json_response(representations.participant(record, base_url(request)))


async def update_participant(request: web.Request) -> web.Response:
    """``Status=disconnected`` removes a connected participant from the room at once (202)."""
    api = api_of(request)
    params = await form(request, ("Status",))
    if params.choice("Status", PARTICIPANT_STATUSES) != "disconnected":
        raise invalid("Status must be disconnected")
    room, record = await find_participant(api, request)
    live = live_participant(api, room.sid, record.sid)
    if live is None:
        raise invalid("Participant is not connected", PARTICIPANT_NOT_FOUND)
    await live.room.remove(live)
    store = await api.settled()
    record = await store.get_participant(room.sid, record.sid) or record
    return web.json_response(representations.participant(record, base_url(request)), status=202)
