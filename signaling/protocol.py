"""The signaling protocol: JSON messages over one websocket, modelled on Twilio's RSP v2.

Every message is an object with ``type``; client messages carry ``version`` (1).

Client -> server
  connect    {token, name, participant: {tracks: [Track]}, subscribe?: {rules}}
  update     {participant?: {tracks: [Track]}, peer_connection?: {description?: {type:
             "answer", revision, sdp}, ice?: {candidates: [{candidate, sdpMid,
             sdpMLineIndex}], complete?}}, subscribe?: {rules}}
  sync       {token, session}            resume a session after the websocket dropped
  disconnect {}
  heartbeat  {}
  Track = {id, kind: audio|video|data, name?, enabled?}

Server -> client
  connected  {session, room: {sid, name, type}, participant: {sid, identity},
             participants: [Participant], published, subscribed, subscribe: {rules},
             options: {heartbeat_interval, max_message_size}}
  synced     same fields as connected
  update     any of {participants, published, subscribed, subscribe, peer_connection:
             {description: {type: "offer", revision, sdp}, sections: [{mid, kind, role,
             track_sid}]}}
  disconnected {status: "disconnected"|"completed", code?, message?}
  error      {code, message, request?}
  heartbeat  {}
  Participant = {sid, identity, state, revision, tracks: [{sid, name, kind, enabled}]}
  published  = {revision, tracks: [{id, sid, kind, name, state: pending|ready}]}
  subscribed = {revision, tracks: [{sid, kind, publisher, label?}]}

Participants carry revisions: a client applies a participant's state only if its revision
is newer than the one it holds, and derives the events (connected, disconnected, track
published / unpublished / enabled / disabled, subscribed / unsubscribed) from the change.
The server is always the offerer; the client answers each offer with the same revision.
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 1
MAX_MESSAGE_SIZE = 1 << 20  # a protocol error above this; the socket itself allows 4x
HEARTBEAT_INTERVAL = 5.0

# Twilio error codes carried in `error` and `disconnected`.
SIGNALING_ERROR = 53000
SIGNALING_MESSAGE_TOO_LARGE = 53000
CLIENT_LOCAL_DESCRIPTION_FAILED = 53400
CLIENT_REMOTE_DESCRIPTION_FAILED = 53402

CLIENT_TYPES = {"connect", "update", "sync", "disconnect", "heartbeat"}


class ProtocolError(Exception):
    """A message the server refuses, answered with an ``error`` message."""

    def __init__(self, code: int, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


def decode(text: str | bytes) -> dict[str, Any]:
    """Parse and check the envelope of one client message."""
    if len(text) > MAX_MESSAGE_SIZE:
        raise ProtocolError(SIGNALING_ERROR, f"Message too large (limit {MAX_MESSAGE_SIZE} bytes)")
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(SIGNALING_ERROR, "Malformed message: not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(SIGNALING_ERROR, "Malformed message: not a JSON object")
    kind = message.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(SIGNALING_ERROR, f"Unknown message type: {str(kind)[:64]!r}")
    version = message.get("version", VERSION)
    if version != VERSION:
        raise ProtocolError(SIGNALING_ERROR, f"Unsupported protocol version: {str(version)[:16]}")
    return message


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def error(code: int, message: str, request: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request:
        out["request"] = request
    return out


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    """Read one field, refusing wrong types with a protocol error."""
    value = message.get(name)
    if value is None:
        if required:
            raise ProtocolError(SIGNALING_ERROR, f"Missing field: {name}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(SIGNALING_ERROR, f"Field {name} has the wrong type")
    return value


def tracks(value: object) -> list[dict[str, Any]]:
    """Validate a list of Track entries."""
    if not isinstance(value, list):
        raise ProtocolError(SIGNALING_ERROR, "participant.tracks must be a list")
    if len(value) > 64:
        raise ProtocolError(53203, "Maximum number of published tracks exceeded")
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            raise ProtocolError(SIGNALING_ERROR, "Each track must be an object")
        track_id = field(entry, "id", str)
        kind = field(entry, "kind", str)
        name = field(entry, "name", str, required=False)
        enabled = field(entry, "enabled", bool, required=False)
        out.append({"id": track_id, "kind": kind, "name": name, "enabled": True if enabled is None else enabled})
    return out


def decode_server(text: str | bytes) -> dict[str, Any]:
    """Parse one server message (client side)."""
    message = json.loads(text)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("malformed server message")
    return message
