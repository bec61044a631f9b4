"""The signaling protocol: JSON messages over one websocket, modelled on Twilio's RSP v2.

Every message is an object with ``type``; client messages carry ``version`` (1).

Client -> server
  connect    {token, name, participant: {tracks: [Track]}, subscribe?: {rules},
             dominant_speaker?: bool, network_quality?: {local: 1-3, remote: 0-3}}
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
             options: {heartbeat_interval, max_message_size}, ice_servers: [IceServer]}
  synced     same fields as connected
  update     any of {participants, published, subscribed, subscribe, peer_connection:
             {description: {type: "offer", revision, sdp}, sections: [{mid, kind, role,
             track_sid}]}, dominant_speaker, network_quality}
  disconnected {status: "disconnected"|"completed", code?, message?, reason?}
             53118 "completed": the room ended (REST or its own timers). 53001 with
             reason "server_shutdown": the server stopped; the room did not end.
  draining   {timeout}  the server is shutting down (SIGTERM): the call goes on for at most
             ``timeout`` seconds, then ``disconnected`` 53001 "server_shutdown" follows
             unless the room empties first. Sent again with the time left after ``synced``.
  error      {code, message, request?}
  heartbeat  {}
  Participant = {sid, identity, state, revision, tracks: [{sid, name, kind, enabled}]}
  published  = {revision, tracks: [{id, sid, kind, name, state: pending|ready}
               | {id, sid, kind, name, state: "failed", error: {code, message}}]}
  subscribed = {revision, tracks: [{sid, kind, publisher, label?} | {sid, error: {code, message}}]}
  IceServer = {urls: str | [str], username?, credential?}  (W3C RTCIceServer)

Dominant speaker and network quality (Twilio's ``dominantSpeaker`` and ``networkQuality``
connect options). Only a client that asked for them in ``connect`` gets them; ``connected``
and ``synced`` then carry the current state in the same fields, updates follow each change.
- ``dominant_speaker = {sid: participant SID or null, speaking: [participant SIDs]}``: the
  room's dominant speaker (decided by the server from RFC 6464 audio levels, sfu/speakers.py)
  and who is speaking now (for a speaking indicator: our extension, not Twilio's).
- ``network_quality = [{sid, level: 0-5, stats?}]``: a participant's level (5 excellent,
  0 network broken) for the client itself at verbosity ``local``, for the others at
  ``remote`` (0: none). Verbosity (Twilio's NetworkQualityVerbosity): 1 the level only;
  2 adds ``stats = {level, audio: {send, recv}, video: {send, recv}}`` (levels, null for a
  kind not sent or received); 3 adds ``sendStats``/``recvStats`` per kind: ``{bandwidth:
  {actual, available, level}, fractionLost: {fractionLost, level}, latency: {jitter, rtt,
  level}}`` (bits/s, 0-1, seconds).

ICE servers (our stand-in for Twilio's Network Traversal Service, whose ``iced`` answer the
SDK uses verbatim as ``RTCConfiguration.iceServers``): ``ice_servers`` lists the STUN and
TURN servers the operator gave (``sfu serve --ice-server``; with ``--turn-secret``, a TURN
entry given without user:password carries a time-limited credential minted for this
participant: signaling/ice.py). It comes only in answer to a valid token, is never logged,
and is ``[]`` when none was given.
Clients gather with it: the Python client adds it to the ``ice_servers`` it was given; sdk.js
uses it unless the app passed ``iceServers`` (Twilio: those replace the service's list).

Failed tracks (Twilio's trackPublicationFailed / trackSubscriptionFailed). When a client's
answer rejects an m-section (port 0: say the room's only video codec is H264 and the browser
has none), the rest of the session goes on and the server reports that one track:
- a publish section: the track stays in ``published`` with ``state: "failed"`` and
  ``error.code`` 53404 ("No supported codec: ..."); it is not published to the room (nobody
  sees it) and stays listed, not published again, until the client drops it from its list;
- a subscribe section: ``subscribed`` lists ``{sid, error: {code: 53404, message}}``
  instead of the subscription; the room counts the track as not subscribed (REST
  SubscribedTracks leaves it out) and does not offer it again while the subscriber's rules
  keep wanting it. The entry goes when the track is unpublished or no longer wanted.

Participants carry revisions: a client applies a participant's state only if its revision
is newer than the one it holds, and derives the events (connected, disconnected, track
published / unpublished / enabled / disabled, subscribed / unsubscribed) from the change.
The server is always the offerer; the client answers each offer with the same revision.
While a websocket is down the peer connection goes on: tracks become ready and
subscriptions follow the room as usual. ``synced`` then carries the current state, followed
by the offer still waiting for an answer, if any.

Errors. A refused message is answered with ``error`` (``request`` names its type when known)
and changes nothing: an ``update`` is checked whole before any part applies. The socket stays
open except where noted. 53000: not JSON, not an object, unknown type, version other than 1,
a field of the wrong type, out of order (``update`` before
``connect``, a second ``connect`` or ``sync``), an answer to no waiting offer, an offer or
other description from the client, a malformed ICE candidate. 53403: an answer the server
cannot apply (garbage SDP; the offer stays open for a proper answer). Tracks: 53125 unknown
kind, 53300 empty / overlong / repeated id or overlong name, 53304 repeated name, 53203 too
many. 53215: invalid subscribe rules. Fatal (error, then the socket closes): token refusals
20101-20107 and 53200 on ``connect`` / ``sync``, a room grant for another room (20106),
53100-53102 bad room name, 53105 room full, 53215 invalid rules on ``connect``, 53002 no
session to resume, 53006 a ``connect`` while the server is draining.

Limits. A message over MAX_MESSAGE_SIZE bytes (fragmented or not) closes the websocket
(1009); the session can be resumed with ``sync``. Until a valid ``connect`` / ``sync`` the
limit is MAX_UNAUTHENTICATED_MESSAGE_SIZE, and a socket that sends none within 10 s gets
``error`` 53000 and is closed. Sockets waiting to authenticate are capped per address (HTTP
429 before the upgrade) and in all (the oldest is shed: ``error`` 53006, then closed).
"""

from __future__ import annotations

import json
from typing import Any

from sfu.errors import (
    MAX_TRACKS_EXCEEDED,
    SIGNALING_ERROR,
    SIGNALING_MESSAGE_TOO_LARGE,
    TRACK_INVALID,
    TRACK_KIND_NOT_SUPPORTED,
    TRACK_NAME_DUPLICATED,
)

VERSION = 1
MAX_MESSAGE_SIZE = 1 << 20  # the websocket's own limit once connected (larger closes it, 1009)
MAX_UNAUTHENTICATED_MESSAGE_SIZE = 64 << 10  # before a valid connect / sync
HEARTBEAT_INTERVAL = 5.0

CLIENT_TYPES = {"connect", "update", "sync", "disconnect", "heartbeat"}
TRACK_KINDS = ("audio", "video", "data")
MAX_TRACK_ID = 256  # the limits sfu.room.Room.publish enforces, checked here for the whole list
MAX_TRACK_NAME = 128


class ProtocolError(Exception):
    """A message the server refuses, answered with an ``error`` message."""

    def __init__(self, code: int, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


def too_large(text: str | bytes) -> bool:
    """True when the message is over MAX_MESSAGE_SIZE bytes as sent (UTF-8: up to 4 bytes a
    character, so short text is never encoded just to measure it)."""
    if isinstance(text, bytes) or len(text) * 4 <= MAX_MESSAGE_SIZE:
        return len(text) > MAX_MESSAGE_SIZE
    return len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_SIZE


def decode(text: str | bytes) -> dict[str, Any]:
    """Parse and check the envelope of one client message."""
    if too_large(text):
        raise ProtocolError(SIGNALING_MESSAGE_TOO_LARGE, f"Message too large (limit {MAX_MESSAGE_SIZE} bytes)")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise ProtocolError(SIGNALING_ERROR, "Malformed message: not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(SIGNALING_ERROR, "Malformed message: not a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:  # (a list or object is unhashable)
        raise ProtocolError(SIGNALING_ERROR, f"Unknown message type: {str(kind)[:64]!r}")
    version = message.get("version", VERSION)
    if type(version) is not int or version != VERSION:
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
    """Validate a list of Track entries as a whole: one bad entry refuses the list, so a
    refused update never half-applies (unpublishing the tracks it leaves out)."""
    if not isinstance(value, list):
        raise ProtocolError(SIGNALING_ERROR, "participant.tracks must be a list")
    if len(value) > 64:
        raise ProtocolError(MAX_TRACKS_EXCEEDED, "Maximum number of published tracks exceeded")
    out = []
    ids: set[str] = set()
    names: set[str] = set()
    for entry in value:
        if not isinstance(entry, dict):
            raise ProtocolError(SIGNALING_ERROR, "Each track must be an object")
        track_id = field(entry, "id", str)
        kind = field(entry, "kind", str)
        name = field(entry, "name", str, required=False)
        enabled = field(entry, "enabled", bool, required=False)
        if kind not in TRACK_KINDS:
            raise ProtocolError(TRACK_KIND_NOT_SUPPORTED, f"Track kind {kind[:16]!r} is not supported")
        if not track_id or len(track_id) > MAX_TRACK_ID:
            raise ProtocolError(TRACK_INVALID, "Track id is invalid")
        if name is not None and len(name) > MAX_TRACK_NAME:
            raise ProtocolError(TRACK_INVALID, "Track name is too long")
        if track_id in ids:
            raise ProtocolError(TRACK_INVALID, f"Track id {track_id[:64]!r} is listed twice")
        if (name or track_id) in names:
            raise ProtocolError(TRACK_NAME_DUPLICATED, f"Track name {(name or track_id)[:64]!r} is duplicated")
        ids.add(track_id)
        names.add(name or track_id)
        out.append({"id": track_id, "kind": kind, "name": name, "enabled": True if enabled is None else enabled})
    return out


def decode_server(text: str | bytes) -> dict[str, Any]:
    """Parse one server message (client side)."""
    message = json.loads(text)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("malformed server message")
    return message


def quality_options(value: object) -> tuple[int, int]:
    """The (local, remote) verbosity of a ``network_quality`` connect option: ``true`` is
    Twilio's default (1, 0); local is at least 1 (Twilio has no local "none")."""
    if value is None or value is False:
        return 0, 0
    if value is True:
        return 1, 0
    if not isinstance(value, dict):
        raise ProtocolError(SIGNALING_ERROR, "Field network_quality has the wrong type")
    levels = []
    for name, default in (("local", 1), ("remote", 0)):
        level = value.get(name, default)
        if type(level) is not int or not 0 <= level <= 3:
            raise ProtocolError(SIGNALING_ERROR, f"network_quality.{name} must be 0 to 3")
        levels.append(level)
    return max(1, levels[0]), levels[1]


def network_quality_entry(sid: str, level: int, stats: dict[str, Any] | None, verbosity: int) -> dict[str, Any]:
    """One participant's ``network_quality`` entry, trimmed to ``verbosity``."""
    entry: dict[str, Any] = {"sid": sid, "level": level}
    if verbosity >= 2 and stats is not None:
        trimmed: dict[str, Any] = {"level": level}
        for kind in ("audio", "video"):
            media = stats.get(kind)
            if media is None:
                trimmed[kind] = None
                continue
            out = {"send": media.get("send"), "recv": media.get("recv")}
            if verbosity >= 3:
                out.update(sendStats=media.get("sendStats"), recvStats=media.get("recvStats"))
            trimmed[kind] = out
        entry["stats"] = trimmed
    return entry
