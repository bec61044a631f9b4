"""Durable storage for what users read back: rooms, participants, published tracks and rules.

Contract: records are plain dataclasses (UTC-aware ``datetime``s, ``None`` when absent);
``put_*`` is an upsert of the whole record and is committed when the awaitable returns;
``get_*`` returns ``None`` when missing; ``list_*`` returns newest first, ordered by
(date_created DESC, sid DESC), with keyset paging: pass the last record's ``(date_created, sid)``
as ``after`` to get the next page. ``SqliteStore`` is the embedded default; other backends
(PostgreSQL) implement the same ``Store`` protocol.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import IO, Any, Callable, Protocol, Sequence, TypeVar

log = logging.getLogger(__name__)

__all__ = [
    "RoomRecord",
    "ParticipantRecord",
    "PublishedTrackRecord",
    "SubscribeRulesRecord",
    "RecordingRulesRecord",
    "PageKey",
    "Store",
    "StoreError",
    "RecordRejected",
    "ConflictError",
    "SqliteStore",
    "DataDirLocked",
    "lock_data_dir",
    "LOCK_FILENAME",
]

T = TypeVar("T")

# The last (date_created, sid) seen on a page; the next page starts strictly after it.
PageKey = tuple[datetime, str]


# --------------------------------------------------------------------------- records


@dataclass
class RoomRecord:
    sid: str
    account_sid: str
    unique_name: str | None
    status: str  # "in-progress" | "completed" | "failed"
    type: str  # "go" | "peer-to-peer" | "group" | "group-small"
    date_created: datetime
    date_updated: datetime
    max_participants: int
    max_participant_duration: int  # seconds
    empty_room_timeout: int  # minutes
    unused_room_timeout: int  # minutes
    max_concurrent_published_tracks: int | None = None
    record_participants_on_connect: bool = False
    audio_only: bool = False
    video_codecs: list[str] | None = None
    media_region: str | None = None
    status_callback: str | None = None
    status_callback_method: str = "POST"
    enable_turn: bool = True
    large_room: bool = False
    created_via_rest: bool = False
    end_time: datetime | None = None
    duration: int | None = None  # seconds


@dataclass
class ParticipantRecord:
    sid: str
    room_sid: str
    account_sid: str
    identity: str
    status: str  # "connected" | "disconnected" | "reconnecting"
    date_created: datetime
    date_updated: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration: int | None = None  # seconds


@dataclass
class PublishedTrackRecord:
    sid: str
    participant_sid: str
    room_sid: str
    name: str
    kind: str  # "audio" | "video" | "data"
    date_created: datetime
    date_updated: datetime
    enabled: bool = True
    status: str = "published"  # "published" | "unpublished" (our bookkeeping)


@dataclass
class SubscribeRulesRecord:
    participant_sid: str
    room_sid: str
    date_created: datetime
    date_updated: datetime
    rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RecordingRulesRecord:
    room_sid: str
    date_created: datetime
    date_updated: datetime
    rules: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- interface


class StoreError(Exception):
    """A storage operation failed (including an unknown parent sid)."""


class RecordRejected(StoreError):
    """The store refuses this record itself (a constraint), not because of its own condition:
    writing it again cannot succeed."""


class ConflictError(RecordRejected):
    """A uniqueness rule was violated: another in-progress room has this unique_name."""


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def put_room(self, room: RoomRecord) -> None:
        """Upsert. Raises ConflictError if another in-progress room has the unique_name."""

    async def get_room(self, sid: str) -> RoomRecord | None: ...
    async def find_in_progress_room(self, unique_name: str) -> RoomRecord | None: ...

    async def list_rooms(
        self,
        *,
        status: str | None = None,
        unique_name: str | None = None,
        created_after: datetime | None = None,  # inclusive
        created_before: datetime | None = None,  # exclusive
        limit: int = 50,
        after: PageKey | None = None,
    ) -> list[RoomRecord]: ...

    async def put_participant(self, participant: ParticipantRecord) -> None: ...
    async def get_participant(self, room_sid: str, sid: str) -> ParticipantRecord | None: ...

    async def list_participants(
        self,
        room_sid: str,
        *,
        status: str | None = None,
        identity: str | None = None,
        created_after: datetime | None = None,  # inclusive
        created_before: datetime | None = None,  # exclusive
        limit: int = 50,
        after: PageKey | None = None,
    ) -> list[ParticipantRecord]: ...

    async def put_track(self, track: PublishedTrackRecord) -> None: ...
    async def get_track(self, participant_sid: str, sid: str) -> PublishedTrackRecord | None: ...

    async def list_tracks(
        self,
        participant_sid: str,
        *,
        status: str | None = None,
        limit: int = 50,
        after: PageKey | None = None,
    ) -> list[PublishedTrackRecord]: ...

    async def put_subscribe_rules(self, rules: SubscribeRulesRecord) -> None: ...
    async def get_subscribe_rules(self, participant_sid: str) -> SubscribeRulesRecord | None: ...

    async def put_recording_rules(self, rules: RecordingRulesRecord) -> None: ...
    async def get_recording_rules(self, room_sid: str) -> RecordingRulesRecord | None: ...

    async def end_in_progress_rooms(self, now: datetime) -> list[str]:
        """Complete every in-progress room, disconnect its connected/reconnecting participants
        and unpublish their tracks, setting end_time/duration. Returns the ended room sids."""


# --------------------------------------------------------------------------- data dir lock

LOCK_FILENAME = "sfu.lock"


class DataDirLocked(StoreError):
    """Another process holds the data directory."""


def lock_data_dir(path: Path) -> IO[str]:
    """Take an exclusive lock on the data directory (``flock`` on ``path/sfu.lock``), held for
    as long as the returned file stays open (the kernel drops it when the process dies, even on
    SIGKILL). Raises DataDirLocked when another process holds it: two servers on one store
    would each take the other's live rooms for leftovers of a crash."""
    path.mkdir(parents=True, exist_ok=True)
    lock = open(path / LOCK_FILENAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise DataDirLocked(f"data directory {path.resolve()} is in use by another sfu server{by}") from None
    except BaseException:
        lock.close()
        raise
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


# --------------------------------------------------------------------------- encoding


def _enc_dt(value: datetime | None) -> str | None:
    """Fixed-width ISO 8601 UTC text with microseconds, so text order is time order."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime not allowed (use UTC-aware): {value!r}")
    u = value.astimezone(timezone.utc)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T"
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"
    )


def _dec_dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _enc_bool(value: bool) -> int:
    return 1 if value else 0


def _dec_bool(value: int) -> bool:
    return bool(value)


def _enc_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _dec_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _ident(value: Any) -> Any:
    return value


_DT = (_enc_dt, _dec_dt)
_BOOL = (_enc_bool, _dec_bool)
_JSON = (_enc_json, _dec_json)
_PLAIN = (_ident, _ident)


class _Table:
    """Column list and codecs of one table; builds the few SQL strings we use."""

    def __init__(self, name: str, record: type, key: str, codecs: dict[str, tuple]) -> None:
        self.name = name
        self.record = record
        self.key = key
        self.columns: list[str] = list(record.__dataclass_fields__)  # type: ignore[attr-defined]
        self.codecs = {c: codecs.get(c, _PLAIN) for c in self.columns}
        cols = ", ".join(self.columns)
        marks = ", ".join("?" for _ in self.columns)
        sets = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c != key)
        self.upsert_sql = (
            f"INSERT INTO {name} ({cols}) VALUES ({marks}) "
            f"ON CONFLICT({key}) DO UPDATE SET {sets}"
        )
        self.select_sql = f"SELECT {cols} FROM {name}"

    def encode(self, record: Any) -> tuple:
        if not isinstance(record, self.record):
            raise TypeError(f"expected {self.record.__name__}, got {type(record).__name__}")
        return tuple(self.codecs[c][0](getattr(record, c)) for c in self.columns)

    def decode(self, row: Sequence[Any]) -> Any:
        return self.record(**{c: self.codecs[c][1](v) for c, v in zip(self.columns, row)})


_ROOMS = _Table(
    "rooms",
    RoomRecord,
    "sid",
    {
        "date_created": _DT,
        "date_updated": _DT,
        "end_time": _DT,
        "record_participants_on_connect": _BOOL,
        "audio_only": _BOOL,
        "enable_turn": _BOOL,
        "large_room": _BOOL,
        "created_via_rest": _BOOL,
        "video_codecs": _JSON,
    },
)
_PARTICIPANTS = _Table(
    "participants",
    ParticipantRecord,
    "sid",
    {
        "date_created": _DT,
        "date_updated": _DT,
        "start_time": _DT,
        "end_time": _DT,
    },
)
_TRACKS = _Table(
    "published_tracks",
    PublishedTrackRecord,
    "sid",
    {"date_created": _DT, "date_updated": _DT, "enabled": _BOOL},
)
_SUBSCRIBE_RULES = _Table(
    "subscribe_rules",
    SubscribeRulesRecord,
    "participant_sid",
    {"date_created": _DT, "date_updated": _DT, "rules": _JSON},
)
_RECORDING_RULES = _Table(
    "recording_rules",
    RecordingRulesRecord,
    "room_sid",
    {"date_created": _DT, "date_updated": _DT, "rules": _JSON},
)


# --------------------------------------------------------------------------- schema

# Each entry migrates the schema from version i to i + 1. Append only; never edit a shipped one.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE rooms (
            sid TEXT PRIMARY KEY,
            account_sid TEXT NOT NULL,
            unique_name TEXT,
            status TEXT NOT NULL,
            type TEXT NOT NULL,
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL,
            max_participants INTEGER NOT NULL,
            max_participant_duration INTEGER NOT NULL,
            empty_room_timeout INTEGER NOT NULL,
            unused_room_timeout INTEGER NOT NULL,
            max_concurrent_published_tracks INTEGER,
            record_participants_on_connect INTEGER NOT NULL,
            audio_only INTEGER NOT NULL,
            video_codecs TEXT,
            media_region TEXT,
            status_callback TEXT,
            status_callback_method TEXT NOT NULL,
            enable_turn INTEGER NOT NULL,
            large_room INTEGER NOT NULL,
            created_via_rest INTEGER NOT NULL,
            end_time TEXT,
            duration INTEGER
        )""",
        "CREATE INDEX rooms_created ON rooms (date_created, sid)",
        "CREATE INDEX rooms_status_created ON rooms (status, date_created, sid)",
        "CREATE INDEX rooms_name_created ON rooms (unique_name, date_created, sid)",
        # Twilio: a unique_name names at most one in-progress room at a time (error 53113).
        "CREATE UNIQUE INDEX rooms_in_progress_name ON rooms (unique_name)"
        " WHERE status = 'in-progress'",
        """CREATE TABLE participants (
            sid TEXT PRIMARY KEY,
            room_sid TEXT NOT NULL REFERENCES rooms (sid),
            account_sid TEXT NOT NULL,
            identity TEXT NOT NULL,
            status TEXT NOT NULL,
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL,
            start_time TEXT,
            end_time TEXT,
            duration INTEGER
        )""",
        "CREATE INDEX participants_room_created ON participants (room_sid, date_created, sid)",
        "CREATE INDEX participants_room_status ON participants"
        " (room_sid, status, date_created, sid)",
        "CREATE INDEX participants_room_identity ON participants"
        " (room_sid, identity, date_created, sid)",
        """CREATE TABLE published_tracks (
            sid TEXT PRIMARY KEY,
            participant_sid TEXT NOT NULL REFERENCES participants (sid),
            room_sid TEXT NOT NULL REFERENCES rooms (sid),
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            status TEXT NOT NULL
        )""",
        "CREATE INDEX tracks_participant_created ON published_tracks"
        " (participant_sid, date_created, sid)",
        "CREATE INDEX tracks_room ON published_tracks (room_sid)",
        """CREATE TABLE subscribe_rules (
            participant_sid TEXT PRIMARY KEY REFERENCES participants (sid),
            room_sid TEXT NOT NULL REFERENCES rooms (sid),
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL,
            rules TEXT NOT NULL
        )""",
        """CREATE TABLE recording_rules (
            room_sid TEXT PRIMARY KEY REFERENCES rooms (sid),
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL,
            rules TEXT NOT NULL
        )""",
    ],
]

SCHEMA_VERSION = len(_MIGRATIONS)


def _seconds_between(start: datetime | None, end: datetime) -> int:
    if start is None:
        return 0
    return max(0, int((end - start).total_seconds()))


# --------------------------------------------------------------------------- sqlite


class SqliteStore:
    """``Store`` on one SQLite file (WAL). All sqlite calls run on one dedicated worker thread
    that owns the single connection, so the event loop never waits on the disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> "SqliteStore":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- rooms

    async def put_room(self, room: RoomRecord) -> None:
        await self._write(_ROOMS.upsert_sql, _ROOMS.encode(room))

    async def get_room(self, sid: str) -> RoomRecord | None:
        return await self._get(_ROOMS, "sid = ?", (sid,))

    async def find_in_progress_room(self, unique_name: str) -> RoomRecord | None:
        return await self._get(_ROOMS, "unique_name = ? AND status = 'in-progress'", (unique_name,))

    async def list_rooms(
        self,
        *,
        status: str | None = None,
        unique_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        after: PageKey | None = None,
    ) -> list[RoomRecord]:
        return await self._list(
            _ROOMS,
            {"status": status, "unique_name": unique_name},
            created_after,
            created_before,
            limit,
            after,
        )

    # -- participants

    async def put_participant(self, participant: ParticipantRecord) -> None:
        await self._write(_PARTICIPANTS.upsert_sql, _PARTICIPANTS.encode(participant))

    async def get_participant(self, room_sid: str, sid: str) -> ParticipantRecord | None:
        return await self._get(_PARTICIPANTS, "room_sid = ? AND sid = ?", (room_sid, sid))

    async def list_participants(
        self,
        room_sid: str,
        *,
        status: str | None = None,
        identity: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        after: PageKey | None = None,
    ) -> list[ParticipantRecord]:
        return await self._list(
            _PARTICIPANTS,
            {"room_sid": room_sid, "status": status, "identity": identity},
            created_after,
            created_before,
            limit,
            after,
        )

    # -- published tracks

    async def put_track(self, track: PublishedTrackRecord) -> None:
        await self._write(_TRACKS.upsert_sql, _TRACKS.encode(track))

    async def get_track(self, participant_sid: str, sid: str) -> PublishedTrackRecord | None:
        return await self._get(_TRACKS, "participant_sid = ? AND sid = ?", (participant_sid, sid))

    async def list_tracks(
        self,
        participant_sid: str,
        *,
        status: str | None = None,
        limit: int = 50,
        after: PageKey | None = None,
    ) -> list[PublishedTrackRecord]:
        return await self._list(
            _TRACKS,
            {"participant_sid": participant_sid, "status": status},
            None,
            None,
            limit,
            after,
        )

    # -- rules

    async def put_subscribe_rules(self, rules: SubscribeRulesRecord) -> None:
        await self._write(_SUBSCRIBE_RULES.upsert_sql, _SUBSCRIBE_RULES.encode(rules))

    async def get_subscribe_rules(self, participant_sid: str) -> SubscribeRulesRecord | None:
        return await self._get(_SUBSCRIBE_RULES, "participant_sid = ?", (participant_sid,))

    async def put_recording_rules(self, rules: RecordingRulesRecord) -> None:
        await self._write(_RECORDING_RULES.upsert_sql, _RECORDING_RULES.encode(rules))

    async def get_recording_rules(self, room_sid: str) -> RecordingRulesRecord | None:
        return await self._get(_RECORDING_RULES, "room_sid = ?", (room_sid,))

    # -- recovery

    async def end_in_progress_rooms(self, now: datetime) -> list[str]:
        now_text = _enc_dt(now)  # validates now before touching the disk
        return await self._run(self._end_in_progress_rooms_sync, now, now_text)

    # -- plumbing (the only code that touches sqlite3 or the worker thread)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._guarded, fn, *args))

    @staticmethod
    def _guarded(fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise ConflictError(str(exc)) from exc
            raise RecordRejected(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not enable WAL on {self.path} (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        log.info("store opened: %s (schema v%d)", self.path, SCHEMA_VERSION)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema v{current}, newer than this code's v{SCHEMA_VERSION}"
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                log.info("store schema migrated to v%d", version + 1)
            if current != SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write_sync(self, sql: str, params: tuple) -> None:
        self._connection().execute(sql, params)  # autocommit: committed on return

    async def _write(self, sql: str, params: tuple) -> None:
        await self._run(self._write_sync, sql, params)

    def _query_sync(self, sql: str, params: tuple) -> list[tuple]:
        return self._connection().execute(sql, params).fetchall()

    async def _get(self, table: _Table, where: str, params: tuple) -> Any:
        rows = await self._run(self._query_sync, f"{table.select_sql} WHERE {where}", params)
        return table.decode(rows[0]) if rows else None

    async def _list(
        self,
        table: _Table,
        equals: dict[str, Any],
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int,
        after: PageKey | None,
    ) -> list[Any]:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        where: list[str] = []
        params: list[Any] = []
        for column, value in equals.items():
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if created_after is not None:
            where.append("date_created >= ?")
            params.append(_enc_dt(created_after))
        if created_before is not None:
            where.append("date_created < ?")
            params.append(_enc_dt(created_before))
        if after is not None:
            after_created, after_sid = after
            after_text = _enc_dt(after_created)
            where.append("(date_created < ? OR (date_created = ? AND sid < ?))")
            params.extend([after_text, after_text, after_sid])
        sql = table.select_sql
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY date_created DESC, sid DESC LIMIT ?"
        params.append(limit)
        rows = await self._run(self._query_sync, sql, tuple(params))
        return [table.decode(row) for row in rows]

    def _end_in_progress_rooms_sync(self, now: datetime, now_text: str) -> list[str]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rooms = conn.execute(
                "SELECT sid, date_created FROM rooms WHERE status = 'in-progress'"
            ).fetchall()
            for room_sid, room_created in rooms:
                participants = conn.execute(
                    "SELECT sid, start_time, date_created FROM participants"
                    " WHERE room_sid = ? AND status IN ('connected', 'reconnecting')",
                    (room_sid,),
                ).fetchall()
                for participant_sid, start_time, participant_created in participants:
                    started = _dec_dt(start_time) or _dec_dt(participant_created)
                    conn.execute(
                        "UPDATE participants SET status = 'disconnected', end_time = ?,"
                        " duration = ?, date_updated = ? WHERE sid = ?",
                        (now_text, _seconds_between(started, now), now_text, participant_sid),
                    )
                conn.execute(
                    "UPDATE published_tracks SET status = 'unpublished', date_updated = ?"
                    " WHERE room_sid = ? AND status = 'published'",
                    (now_text, room_sid),
                )
                conn.execute(
                    "UPDATE rooms SET status = 'completed', end_time = ?, duration = ?,"
                    " date_updated = ? WHERE sid = ?",
                    (now_text, _seconds_between(_dec_dt(room_created), now), now_text, room_sid),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        ended = [sid for sid, _ in rooms]
        if ended:
            log.warning("ended %d room(s) left in progress: %s", len(ended), ", ".join(ended))
        return ended
