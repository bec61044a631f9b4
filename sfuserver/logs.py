"""Logging for ``sfu serve``: the format (text or JSON lines), the lifecycle lines an operator
reads (rooms and participants coming and going), and the HTTP access log.

The lifecycle lines come from listening to the room model's events, never from prints in it;
the access log names method, path, status and time, never the query string or a header (the
signaling URL may carry an access token, REST requests carry Basic auth).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from sfu.participant import Participant
from sfu.registry import RoomRegistry
from sfu.room import Room

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

events_logger = logging.getLogger("sfuserver.events")
access_logger = logging.getLogger("sfuserver.access")

# Libraries that log every ICE candidate pair check at INFO: only their warnings by default.
CHATTY = ("aioice",)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record at ``level`` or above to stderr in ``fmt`` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become records too (one format on stderr)
    quiet = logging.getLevelName(level) > logging.DEBUG
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


# --- rooms and participants ------------------------------------------------------------------


def log_lifecycle(registry: RoomRegistry) -> None:
    """Log one INFO line when a room is created or ends and when a participant joins or leaves.

    Names chosen by clients (room names, identities) are quoted with ``repr`` so a newline in
    one cannot forge a log line.
    """
    registry.on("room_created", _room_created)
    registry.on("room_ended", _room_ended)


def _room_created(room: Room) -> None:
    events_logger.info("room created: %s name=%r type=%s", room.sid, room.unique_name, room.settings.type)
    room.on("participant_connected", lambda participant: _participant_joined(room, participant))


def _room_ended(room: Room) -> None:
    events_logger.info("room ended: %s name=%r status=%s duration=%ss", room.sid, room.unique_name, room.status, room.duration)


def _participant_joined(room: Room, participant: Participant) -> None:
    events_logger.info(
        "participant joined: %s identity=%r room=%s (%r) participants=%d",
        participant.sid, participant.identity, room.sid, room.unique_name, len(room.participants),
    )

    def left(code: int | None, message: str | None) -> None:
        reason = f" code={code} reason={message!r}" if code is not None else ""
        events_logger.info(
            "participant left: %s identity=%r room=%s (%r)%s",
            participant.sid, participant.identity, room.sid, room.unique_name, reason,
        )

    participant.once("removed", left)


# --- HTTP access log -------------------------------------------------------------------------


def access_log_middleware() -> Middleware:
    """One INFO line per HTTP request: client, method, path (no query), status, milliseconds.

    Never the query string (``/signaling?access_token=...``) nor any header (``Authorization``).
    A websocket's line is written when it closes, with status 101.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            access_logger.info(
                "%s %s %s %d %.1fms",
                request.remote or "-", request.method, request.rel_url.raw_path, status, (time.perf_counter() - start) * 1000,
            )

    return middleware
