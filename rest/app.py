"""Twilio's Video v1 Rooms REST API, mounted at ``/v1`` on the server's aiohttp app."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from sfu.credentials import Credentials
from sfu.registry import RoomRegistry

from . import participants, rooms, rules, tracks
from .auth import auth_middleware
from .callbacks import StatusCallbacks
from .context import API, RestApi
from sfu.errors import METHOD_NOT_ALLOWED

from .errors import Handler, RestError, errors_middleware, not_found

CALLBACKS = web.AppKey("status_callbacks", StatusCallbacks)

_PARTICIPANT = "/Rooms/{room}/Participants/{participant}"
ROUTES: dict[str, dict[str, Handler]] = {
    "/Rooms": {"GET": rooms.list_rooms, "POST": rooms.create_room},
    "/Rooms/{room}": {"GET": rooms.fetch_room, "POST": rooms.update_room},
    "/Rooms/{room}/RecordingRules": {"GET": rules.fetch_recording_rules, "POST": rules.update_recording_rules},
    "/Rooms/{room}/Participants": {"GET": participants.list_participants},
    _PARTICIPANT: {"GET": participants.fetch_participant, "POST": participants.update_participant},
    f"{_PARTICIPANT}/PublishedTracks": {"GET": tracks.list_published},
    f"{_PARTICIPANT}/PublishedTracks/{{track}}": {"GET": tracks.fetch_published},
    f"{_PARTICIPANT}/SubscribedTracks": {"GET": tracks.list_subscribed},
    f"{_PARTICIPANT}/SubscribedTracks/{{track}}": {"GET": tracks.fetch_subscribed},
    f"{_PARTICIPANT}/SubscribeRules": {"GET": rules.fetch_subscribe_rules, "POST": rules.update_subscribe_rules},
}


def _by_method(methods: Mapping[str, Handler]) -> Handler:
    """One resource's handlers: any other method is Twilio's 405 (20004)."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        handler = methods.get(request.method)
        if handler is None:
            error = RestError(405, METHOD_NOT_ALLOWED, f"Method {request.method} not allowed")
            response = error.response()
            response.headers["Allow"] = ", ".join(methods)
            return response
        return await handler(request)

    return dispatch


async def _unknown(request: web.Request) -> web.StreamResponse:
    raise not_found(request.path)


def add_routes(
    app: web.Application,
    registry: RoomRegistry,
    credentials: Credentials,
    default_status_callback: str | None = None,
    status_callback_public_only: bool = False,
) -> RestApi:
    """Mount ``/v1`` (Basic auth, Twilio's error bodies) and start sending status callbacks."""
    api = RestApi(registry, credentials)
    callbacks = StatusCallbacks(registry, credentials, default_url=default_status_callback, public_only=status_callback_public_only)
    v1 = web.Application(middlewares=[errors_middleware, auth_middleware(credentials)])
    v1[API] = api
    app[CALLBACKS] = callbacks
    for path, methods in ROUTES.items():
        v1.router.add_route("*", path, _by_method(methods))
    v1.router.add_route("*", "/{tail:.*}", _unknown)

    async def close_callbacks(_: web.Application) -> None:
        await callbacks.close()

    v1.on_cleanup.append(close_callbacks)
    app.add_subapp("/v1", v1)
    return api
