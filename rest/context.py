"""What every REST handler reaches: the live registry and the store behind it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from sfu.credentials import Credentials
from sfu.records import RecordsUnavailable
from sfu.registry import RoomRegistry
from sfu.store import Store

from .errors import store_unavailable


@dataclass
class RestApi:
    registry: RoomRegistry
    credentials: Credentials

    async def settled(self) -> Store:
        """The store, once every change the registry made so far is in it: REST reads the
        same truth the live rooms wrote. A 503 while the store refuses writes."""
        store = self.registry.store
        if store is None:
            raise RuntimeError("the REST API needs a registry with a store")
        try:
            await self.registry.records.flush()
        except RecordsUnavailable:
            raise store_unavailable() from None
        return store


API = web.AppKey("rest_api", RestApi)


def api_of(request: web.Request) -> RestApi:
    return request.config_dict[API]
