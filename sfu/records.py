"""Writes the live room model to the store, in order, without ever blocking media.

The room model calls these methods synchronously as its state changes; each builds a
record at that moment and queues it. One task drains the queue, so records reach the
store in the order the changes happened, and a slow disk delays only the records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .store import ParticipantRecord, PublishedTrackRecord, RecordingRulesRecord, RoomRecord, Store, SubscribeRulesRecord

if TYPE_CHECKING:
    from .participant import Participant, PublishedTrack
    from .room import Room

logger = logging.getLogger(__name__)


def room_record(room: "Room", account_sid: str) -> RoomRecord:
    s = room.settings
    return RoomRecord(
        sid=room.sid,
        account_sid=account_sid,
        unique_name=room.unique_name,
        status=room.status,
        type=s.type,
        date_created=room.created_at,
        date_updated=room.updated_at,
        max_participants=s.max_participants,
        max_participant_duration=s.max_participant_duration,
        empty_room_timeout=s.empty_room_timeout,
        unused_room_timeout=s.unused_room_timeout,
        max_concurrent_published_tracks=s.max_concurrent_published_tracks,
        record_participants_on_connect=s.record_participants_on_connect,
        audio_only=s.audio_only,
        video_codecs=s.video_codecs,
        media_region=s.media_region,
        status_callback=s.status_callback,
        status_callback_method=s.status_callback_method,
        enable_turn=s.enable_turn,
        large_room=s.large_room,
        created_via_rest=s.created_via_rest,
        end_time=room.ended_at,
        duration=room.duration,
    )


def participant_record(p: "Participant", account_sid: str) -> ParticipantRecord:
    end = p.disconnected_at
    return ParticipantRecord(
        sid=p.sid,
        room_sid=p.room.sid,
        account_sid=account_sid,
        identity=p.identity,
        status=p.status,
        date_created=p.connected_at,
        date_updated=end or p.connected_at,
        start_time=p.connected_at,
        end_time=end,
        duration=int((end - p.connected_at).total_seconds()) if end else None,
    )


def track_record(t: "PublishedTrack", now: object) -> PublishedTrackRecord:
    return PublishedTrackRecord(
        sid=t.sid,
        participant_sid=t.publisher.sid,
        room_sid=t.publisher.room.sid,
        name=t.name,
        kind=t.kind,
        date_created=t.created_at,
        date_updated=now,  # type: ignore[arg-type]
        enabled=t.enabled,
        status="unpublished" if t.unpublished else "published",
    )


class RecordKeeper:
    def __init__(self, store: Store | None, account_sid: str, now: Callable[[], object]) -> None:
        self.store = store
        self.account_sid = account_sid
        self._now = now
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.store is not None and self._task is None:
            self._task = asyncio.create_task(self._drain())

    def _put(self, write: Callable[[], Awaitable[None]]) -> None:
        if self.store is not None:
            self._queue.put_nowait(write)

    def room(self, room: "Room") -> None:
        record = room_record(room, self.account_sid)
        self._put(lambda: self.store.put_room(record))  # type: ignore[union-attr]

    def participant(self, p: "Participant") -> None:
        record = participant_record(p, self.account_sid)
        self._put(lambda: self.store.put_participant(record))  # type: ignore[union-attr]

    def track(self, t: "PublishedTrack") -> None:
        record = track_record(t, self._now())
        self._put(lambda: self.store.put_track(record))  # type: ignore[union-attr]

    def rules(self, p: "Participant") -> None:
        record = SubscribeRulesRecord(
            participant_sid=p.sid,
            room_sid=p.room.sid,
            date_created=p.connected_at,
            date_updated=p.rules_updated_at,
            rules=[dict(r) for r in p.rules],
        )
        self._put(lambda: self.store.put_subscribe_rules(record))  # type: ignore[union-attr]

    def recording_rules(self, room: "Room", rules: list[dict[str, Any]]) -> None:
        record = RecordingRulesRecord(
            room_sid=room.sid,
            date_created=room.created_at,
            date_updated=self._now(),  # type: ignore[arg-type]
            rules=[dict(r) for r in rules],
        )
        self._put(lambda: self.store.put_recording_rules(record))  # type: ignore[union-attr]

    async def flush(self) -> None:
        """Wait until every queued record is in the store."""
        if self._task is not None:
            await self._queue.join()

    async def _drain(self) -> None:
        while True:
            write = await self._queue.get()
            try:
                if write is None:
                    return
                await write()
            except Exception:
                logger.exception("could not store a record")
            finally:
                self._queue.task_done()

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
