"""A participant's SubscribeRules (applied to live routing at once) and a room's RecordingRules
(validated and stored; recording itself follows them in a later issue)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sfu import rules as subscribe_rules
from sfu.errors import INVALID_SUBSCRIBE_RULES, PARTICIPANT_NOT_FOUND, RECORDING_RULES_INVALID, ROOM_COMPLETED
from sfu.store import RecordingRulesRecord, SubscribeRulesRecord

from . import representations
from .context import api_of
from .errors import invalid
from .params import form, query
from .lookup import find_participant, find_room, live_participant



def validate_recording_rules(rules: object) -> list[dict[str, Any]]:
    """Recording rules are subscribe rules without ``priority`` and without data tracks (53120)."""
    try:
        normalised = subscribe_rules.validate(rules)
    except subscribe_rules.InvalidRules as exc:
        raise invalid(str(exc), RECORDING_RULES_INVALID) from None
    for rule in normalised:
        if "priority" in rule:
            raise invalid("Unknown rule field(s): priority", RECORDING_RULES_INVALID)
        if rule.get("kind") not in (None, "audio", "video"):
            raise invalid("kind must be audio or video", RECORDING_RULES_INVALID)
    return normalised


def _rules_param(rules: object, code: int) -> object:
    if rules is None:
        raise invalid("Rules is required", code)
    return rules


async def fetch_subscribe_rules(request: web.Request) -> web.Response:
    api = api_of(request)
    query(request, ())
    room, participant = await find_participant(api, request)
    store = await api.settled()
    record = await store.get_subscribe_rules(participant.sid) or SubscribeRulesRecord(
        participant.sid, room.sid, participant.date_created, participant.date_created, list(subscribe_rules.DEFAULT_RULES)
    )
    return web.json_response(representations.subscribe_rules(record))


async def update_subscribe_rules(request: web.Request) -> web.Response:
    """Replace the rules; the participant's subscriptions follow before the answer is sent."""
    api = api_of(request)
    params = await form(request, ("Rules",))
    rules = _rules_param(params.json("Rules", INVALID_SUBSCRIBE_RULES), INVALID_SUBSCRIBE_RULES)
    room, participant = await find_participant(api, request)
    live = live_participant(api, room.sid, participant.sid)
    if live is None:
        raise invalid("Participant is not connected", PARTICIPANT_NOT_FOUND)
    try:
        live.room.set_subscribe_rules(live, rules)
    except subscribe_rules.InvalidRules as exc:
        raise invalid(str(exc), exc.code) from None
    return await fetch_subscribe_rules(request)


async def fetch_recording_rules(request: web.Request) -> web.Response:
    api = api_of(request)
    query(request, ())
    room = await find_room(api, request.match_info["room"])
    store = await api.settled()
    default = [{"type": "include", "all": True}] if room.record_participants_on_connect else []
    record = await store.get_recording_rules(room.sid) or RecordingRulesRecord(
        room.sid, room.date_created, room.date_created, default
    )
    return web.json_response(representations.recording_rules(record))


async def update_recording_rules(request: web.Request) -> web.Response:
    api = api_of(request)
    params = await form(request, ("Rules",))
    rules = validate_recording_rules(_rules_param(params.json("Rules", RECORDING_RULES_INVALID), RECORDING_RULES_INVALID))
    room = await find_room(api, request.match_info["room"])
    live = api.registry.get(room.sid)
    if live is None or not live.in_progress:
        raise invalid("Room completed", ROOM_COMPLETED)
    live.set_recording_rules(rules)
    return await fetch_recording_rules(request)
