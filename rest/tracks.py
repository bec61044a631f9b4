"""A participant's PublishedTracks (from the records) and SubscribedTracks (live routing)."""

from __future__ import annotations

from aiohttp import web

from sfu.store import PageKey, PublishedTrackRecord

from . import representations
from .context import api_of
from .errors import not_found
from .paging import PAGING_PARAMS, memory_fetch, page_request, page_response
from .lookup import find_participant, live_participant
from .params import query
from .representations import SubscribedTrack, base_url, participant_path


async def list_published(request: web.Request) -> web.Response:
    api = api_of(request)
    page = page_request(query(request, PAGING_PARAMS))
    _, participant = await find_participant(api, request)
    store = await api.settled()

    async def fetch(key: PageKey | None, limit: int) -> list[PublishedTrackRecord]:
        return await store.list_tracks(participant.sid, status="published", limit=limit, after=key)

    base = base_url(request)
    return await page_response(
        request, base, page, fetch, "published_tracks", lambda t: representations.published_track(t, base)
    )


async def fetch_published(request: web.Request) -> web.Response:
    api = api_of(request)
    query(request, ())
    room, participant = await find_participant(api, request)
    store = await api.settled()
    track_sid = request.match_info["track"]
    record = await store.get_track(participant.sid, track_sid)
    if record is None or record.status != "published":
        raise not_found(f"{participant_path(room.sid, participant.sid)}/PublishedTracks/{track_sid}")
    return web.json_response(representations.published_track(record, base_url(request)))


def _subscribed(request: web.Request, room_sid: str, participant_sid: str) -> list[SubscribedTrack]:
    live = live_participant(api_of(request), room_sid, participant_sid)
    if live is None:
        return []
    tracks = []
    for sub in live.subscriptions.values():
        track = sub.track
        since = sub.created_at or track.created_at
        tracks.append(
            SubscribedTrack(
                sid=track.sid,
                participant_sid=live.sid,
                publisher_sid=track.publisher.sid,
                room_sid=room_sid,
                name=track.name,
                kind=track.kind,
                enabled=track.enabled,
                date_created=since,
                date_updated=since,
            )
        )
    return tracks


async def list_subscribed(request: web.Request) -> web.Response:
    page = page_request(query(request, PAGING_PARAMS))
    room, participant = await find_participant(api_of(request), request)
    base = base_url(request)
    fetch = memory_fetch(_subscribed(request, room.sid, participant.sid))
    return await page_response(
        request, base, page, fetch, "subscribed_tracks", lambda t: representations.subscribed_track(t, base)
    )


async def fetch_subscribed(request: web.Request) -> web.Response:
    query(request, ())
    room, participant = await find_participant(api_of(request), request)
    track_sid = request.match_info["track"]
    found = next((t for t in _subscribed(request, room.sid, participant.sid) if t.sid == track_sid), None)
    if found is None:
        raise not_found(f"{participant_path(room.sid, participant.sid)}/SubscribedTracks/{track_sid}")
    return web.json_response(representations.subscribed_track(found, base_url(request)))
