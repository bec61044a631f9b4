"""Writes the live room model to the store, in order, without ever blocking media.

The keeper observes the room model (``observe``: the registry's and each room's events, all
emitted after the state changed); each change builds a record at that moment and queues it. One task drains the queue, so records reach the
store in the order the changes happened, and a slow disk delays only the records.
A write the store refuses (disk full, I/O error) is retried with backoff, and the records
wait in memory, in order, until it accepts them; ``flush`` is how callers make a change
durable before they acknowledge it (``connected``, ``201``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .store import (
    ParticipantRecord,
    PublishedTrackRecord,
    RecordingRulesRecord,
    RecordRejected,
    RoomRecord,
    Store,
    SubscribeRulesRecord,
)

if TYPE_CHECKING:
    from .participant import Participant, PublishedTrack
    from .registry import RoomRegistry
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


class RecordsUnavailable(Exception):
    """The store has been refusing writes: records wait in memory until it accepts them."""


# A failed write is retried after RETRY_INITIAL seconds, doubling up to RETRY_MAX.
RETRY_INITIAL = 0.05
RETRY_MAX = 5.0
MAX_PENDING = 10_000  # distinct records held in memory while the store refuses writes
UNHEALTHY_GRACE = 2.0  # seconds a durability wait lets a failing store recover before giving up

# Refusals of the record itself: retrying cannot help (an unknown parent, a unique name taken,
# a value the store cannot encode). Anything else (disk full, I/O error, database locked,
# store closed) is the store's condition, and the record waits for it to pass.
_PERMANENT = (RecordRejected, TypeError, ValueError)


@dataclass
class _Pending:
    write: Callable[[], Awaitable[None]]
    first: int  # sequence number of the oldest put not yet committed for this record
    last: int  # sequence number of the newest put (the content ``write`` holds)


class RecordKeeper:
    """Puts are whole-record upserts keyed by (table, key), so the queue is keyed the same way:
    a newer put of a record still waiting replaces the waiting content in place, keeping its
    place in the order (moving a newer version earlier is safe: its parents were put before
    its first version, and a room only goes from in-progress to completed). While the store
    refuses writes, at most ``max_pending`` distinct records wait; beyond that the oldest
    waiting record is dropped (counted in ``dropped``, logged as an error)."""

    def __init__(
        self,
        store: Store | None,
        account_sid: str,
        now: Callable[[], object],
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.store = store
        self.account_sid = account_sid
        self._now = now
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_pending = max_pending
        self._pending: OrderedDict[tuple[str, str], _Pending] = OrderedDict()
        self._seq = 0
        self._wakeup = asyncio.Event()  # set when there is something to write (or to stop)
        self._changed = asyncio.Event()  # set after every write attempt, for durability waits
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # the last write attempt failed
        self.write_failures = 0  # failed write attempts, in total
        self.dropped = 0  # records given up on (refused by the store, or beyond max_pending)
        self.last_error: str | None = None

    # --- what metrics and /healthz read ------------------------------------------------

    @property
    def pending(self) -> int:
        """Records queued and not yet stored."""
        return len(self._pending)

    @property
    def healthy(self) -> bool:
        """The last write succeeded, or nothing is waiting."""
        return not self._failing or not self._pending

    # --- observing the model -------------------------------------------------------------

    def observe(self, registry: "RoomRegistry") -> None:
        """Record every change of the registry's rooms, participants, tracks and rules, as the
        model announces it (the model never calls the keeper itself)."""
        registry.on("room_created", self._room_created)
        registry.on("room_ended", self.room)

    def _room_created(self, room: "Room") -> None:
        self.room(room)
        room.on("participant_connected", self._participant_connected)
        room.on("participant_updated", self.participant)  # (e.g. reconnecting)
        room.on("participant_disconnected", self.participant)
        for event in ("track_added", "track_removed", "track_enabled", "track_disabled"):
            room.on(event, lambda participant, track: self.track(track))
        room.on("subscribe_rules_changed", self.rules)
        room.on("recording_rules_changed", lambda rules: self.recording_rules(room, rules))

    def _participant_connected(self, p: "Participant") -> None:
        self.participant(p)
        self.rules(p)

    # --- queueing ----------------------------------------------------------------------

    def start(self) -> None:
        if self.store is not None and self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._drain())

    def _put(self, key: tuple[str, str], write: Callable[[], Awaitable[None]]) -> None:
        if self.store is None:
            return
        self._seq += 1
        entry = self._pending.get(key)
        if entry is not None:
            entry.write, entry.last = write, self._seq
        else:
            self._pending[key] = _Pending(write, self._seq, self._seq)
            if len(self._pending) > self.max_pending:
                lost, _ = self._pending.popitem(last=False)
                self.dropped += 1
                logger.error("%d records wait for the store: dropped the oldest (%s %s)", len(self._pending), *lost)
        self._wakeup.set()

    def room(self, room: "Room") -> None:
        record = room_record(room, self.account_sid)
        self._put(("room", record.sid), lambda: self.store.put_room(record))  # type: ignore[union-attr]

    def participant(self, p: "Participant") -> None:
        record = participant_record(p, self.account_sid)
        self._put(("participant", record.sid), lambda: self.store.put_participant(record))  # type: ignore[union-attr]

    def track(self, t: "PublishedTrack") -> None:
        record = track_record(t, self._now())
        self._put(("track", record.sid), lambda: self.store.put_track(record))  # type: ignore[union-attr]

    def rules(self, p: "Participant") -> None:
        record = SubscribeRulesRecord(
            participant_sid=p.sid,
            room_sid=p.room.sid,
            date_created=p.connected_at,
            date_updated=p.rules_updated_at,
            rules=[dict(r) for r in p.rules],
        )
        self._put(("subscribe_rules", p.sid), lambda: self.store.put_subscribe_rules(record))  # type: ignore[union-attr]

    def recording_rules(self, room: "Room", rules: list[dict[str, Any]]) -> None:
        record = RecordingRulesRecord(
            room_sid=room.sid,
            date_created=room.created_at,
            date_updated=self._now(),  # type: ignore[arg-type]
            rules=[dict(r) for r in rules],
        )
        self._put(("recording_rules", room.sid), lambda: self.store.put_recording_rules(record))  # type: ignore[union-attr]

    # --- durability ----------------------------------------------------------------------

    def _stored_through(self, seq: int) -> bool:
        return all(entry.first > seq for entry in self._pending.values())

    async def flush(self, grace: float = UNHEALTHY_GRACE) -> None:
        """Wait until every record put so far is committed. Raises RecordsUnavailable when the
        store refuses writes and has not recovered within ``grace`` seconds of this wait (a
        slow but working store is waited for)."""
        if self._task is None:
            return
        target = self._seq
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace
        while not self._stored_through(target):
            if not self.healthy:
                left = give_up - loop.time()
                if left <= 0:
                    raise RecordsUnavailable(f"the store is refusing writes ({self.last_error}); {self.pending} records wait")
            else:
                left = None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    # --- the writer ---------------------------------------------------------------------

    def _attempted(self) -> None:
        self._changed.set()

    async def _drain(self) -> None:
        delay = self.retry_initial
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key, entry = next(iter(self._pending.items()))
            version = entry.last
            try:
                await entry.write()
            except _PERMANENT as exc:
                # This record can never be stored; the others must not wait behind it.
                logger.error("the store refused a record (%s %s), dropped: %s", *key, exc)
                self.dropped += 1
                self._finish(key, entry, version)
            except Exception as exc:
                self.write_failures += 1
                self.last_error = str(exc) or type(exc).__name__
                if not self._failing:
                    logger.error("could not store a record (%s %s): %s; %d waiting, retrying", *key, self.last_error, self.pending)
                self._failing = True
                self._attempted()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            else:
                if self._failing:
                    logger.warning("the store accepts writes again (%d records waiting)", self.pending - 1)
                self._failing = False
                self._finish(key, entry, version)
            delay = self.retry_initial
            self._attempted()

    def _finish(self, key: tuple[str, str], entry: _Pending, version: int) -> None:
        if entry.last == version:
            if self._pending.get(key) is entry:
                del self._pending[key]
        else:  # a newer version arrived while this one was written: it stays first in line
            entry.first = version + 1

    async def close(self, timeout: float = 5.0) -> None:
        """Store what is pending, giving a failing store ``timeout`` seconds to recover."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            logger.error("the store did not take %d records before shutdown: they are lost", self.pending)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
