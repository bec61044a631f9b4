"""The one place room state is reached through: live rooms by SID and by unique name."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from . import sids
from .contracts import MediaPlane
from .errors import ROOM_EXISTS, ROOM_NAME_BAD_CHARACTERS, ROOM_NAME_INVALID, ROOM_NAME_TOO_LONG, ROOM_TYPE_INVALID, SERVER_BUSY
from .participant import ParticipantError
from .records import RecordKeeper
from .room import ROOM_TYPES, Room, RoomSettings
from .store import Store

logger = logging.getLogger(__name__)

MAX_ROOM_NAME = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def validate_room_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ParticipantError(ROOM_NAME_INVALID, "Room name is invalid")
    if len(name) > MAX_ROOM_NAME:
        raise ParticipantError(ROOM_NAME_TOO_LONG, "Room name is too long")
    if _CONTROL.search(name):
        raise ParticipantError(ROOM_NAME_BAD_CHARACTERS, "Room name contains invalid characters")
    return name


class RoomRegistry(AsyncIOEventEmitter):
    """Events: ``room_created`` (room), ``room_ended`` (room)."""

    def __init__(
        self,
        plane: MediaPlane,
        account_sid: str,
        store: Store | None = None,
        clock: Callable[[], datetime] = utcnow,
        call_later: Callable[[float, Callable[[], Any]], asyncio.TimerHandle] | None = None,
        ad_hoc_max_participants: int | None = None,
    ) -> None:
        """``ad_hoc_max_participants`` sizes rooms created on connect (default: Twilio's
        group-room cap of 50); REST-created rooms keep Twilio's validated limits. ``plane``
        builds every participant's media transport (the registry does not start or close it)."""
        super().__init__()
        self.plane = plane
        self.account_sid = account_sid
        self.store = store
        self.now = clock
        self._call_later = call_later
        self.records = RecordKeeper(store, account_sid, clock)
        self.records.observe(self)  # (first: the store hears of each change before anyone else acts on it)
        self.rooms: dict[str, Room] = {}
        self._by_name: dict[str, Room] = {}
        self._ad_hoc_max_participants = ad_hoc_max_participants
        self.draining = False  # the server is shutting down: rooms go on, no new ones (sfuserver/drain.py)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> asyncio.TimerHandle:
        if self._call_later is not None:
            return self._call_later(delay, callback)
        return asyncio.get_running_loop().call_later(delay, callback)

    async def start(self) -> None:
        """Open the store and end rooms a previous process left in progress."""
        if self.store is not None:
            await self.store.open()
            ended = await self.store.end_in_progress_rooms(self.now())
            if ended:
                logger.info("ended %d room(s) left in progress by the previous run", len(ended))
        self.records.start()

    async def close(self) -> None:
        for room in list(self.rooms.values()):
            await room.end()
        await self.records.close()
        if self.store is not None:
            await self.store.close()

    # --- lookups ------------------------------------------------------------------------

    def get(self, sid: str) -> Room | None:
        return self.rooms.get(sid)

    def find_in_progress(self, unique_name: str) -> Room | None:
        return self._by_name.get(unique_name)

    # --- creating -----------------------------------------------------------------------

    def create_room(self, unique_name: str | None, settings: RoomSettings) -> Room:
        """Create an in-progress room; its unique name must be free (ROOM_EXISTS)."""
        if self.draining:
            raise ParticipantError(SERVER_BUSY, "Server is busy: it is shutting down")
        sid = sids.new_sid(sids.ROOM)
        name = sid if unique_name is None else validate_room_name(unique_name)
        if name in self._by_name:
            raise ParticipantError(ROOM_EXISTS, "Room exists")
        if settings.type not in ROOM_TYPES:
            raise ParticipantError(ROOM_TYPE_INVALID, "RoomType is not valid")
        room = Room(sid, name, settings, self, self.now())
        self.rooms[sid] = room
        self._by_name[name] = room
        self.emit("room_created", room)
        if settings.created_via_rest:
            room._schedule_end(settings.unused_room_timeout * 60)
        return room

    def room_for_connect(self, name: str) -> Room:
        """The in-progress room called ``name``, or a new ad-hoc group room."""
        room = self._by_name.get(validate_room_name(name))
        if room is None:
            settings = RoomSettings()
            if self._ad_hoc_max_participants is not None:
                settings.max_participants = self._ad_hoc_max_participants
            room = self.create_room(name, settings)
        return room

    def room_ended(self, room: Room) -> None:
        self.rooms.pop(room.sid, None)
        if self._by_name.get(room.unique_name) is room:
            del self._by_name[room.unique_name]
        self.plane.room_closed(room.sid)
        self.emit("room_ended", room)
