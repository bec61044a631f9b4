"""The room model's state in RSP v2's shapes (what ``connected`` / ``update`` / ``synced`` carry).

The same ``Participant`` / ``Room`` objects serve our own ``/signaling`` clients; only the
shapes differ: a remote track has a ``priority``, ``published`` says ``ready`` as soon as a
track has its SID (the SDK's ``publishTrack`` waits for it), and ``subscribed`` names, for
each track SID, the id the subscriber's SDK finds it by: the msid track id of our m-section
for audio and video, the label of our data channel for data, both the track SID.
"""

from __future__ import annotations

from typing import Any

from sfu.contracts import ParticipantTransport
from sfu.participant import Participant

SESSION_TIMEOUT = 30  # s: the SDK's reconnection window (options.session_timeout)


def transport(participant: Participant) -> ParticipantTransport:
    """The participant's media transport."""
    return participant.transport


def participant_state(participant: Participant) -> dict[str, Any]:
    """A remote participant as the SDK reads it: ``{sid, identity, state, revision, tracks}``."""
    described = participant.describe()
    described["tracks"] = [dict(track, priority="standard") for track in described["tracks"]]
    return described


def published(participant: Participant) -> dict[str, Any]:
    tracks = []
    for track in participant.published.values():
        if track.error is not None:
            tracks.append({"id": track.client_id, "state": "failed", "error": {"code": track.error[0], "message": track.error[1]}})
        else:
            tracks.append({"id": track.client_id, "sid": track.sid, "state": "ready"})
    return {"revision": participant.published_revision, "tracks": tracks}


def subscribed(participant: Participant) -> dict[str, Any]:
    tracks: list[dict[str, Any]] = [{"sid": sid, "id": sid} for sid in participant.subscriptions]
    for sid, (code, message) in participant.failed_subscriptions.items():
        tracks.append({"sid": sid, "error": {"code": code, "message": message}})
    return {"revision": participant.subscribed_revision, "tracks": tracks}


def room_state(kind: str, session: str, participant: Participant) -> dict[str, Any]:
    """``connected`` / ``synced``: the whole room as ``participant`` sees it (never itself)."""
    room = participant.room
    return {
        "type": kind,
        "session": session,
        "sid": room.sid,
        "name": room.unique_name,
        "options": {"session_timeout": SESSION_TIMEOUT, "media_region": "local", "signaling_region": "local"},
        "participant": {"sid": participant.sid, "identity": participant.identity},
        "participants": [participant_state(p) for p in room.participants.values() if p is not participant],
        "published": published(participant),
        "subscribed": subscribed(participant),
        "recording": {"is_recording": False, "revision": 1},
    }


def ice(sdp: str, revision: int = 1) -> dict[str, Any] | None:
    """The candidates in our ``sdp`` as an RSP ``ice`` entry (its first m-section's: every
    section is bundled on it), or None. The SDK keeps candidates per ufrag and takes each
    newer ``revision``'s list as cumulative."""
    lines = sdp.split("\r\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    first = lines[starts[0]:starts[1] if len(starts) > 1 else len(lines)] if starts else []
    ufrag = next((line[12:].strip() for line in first if line.startswith("a=ice-ufrag:")), None)
    mid = next((line[6:] for line in first if line.startswith("a=mid:")), None)
    if ufrag is None or mid is None:
        return None
    candidates = [
        {"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": 0, "usernameFragment": ufrag}
        for line in first if line.startswith("a=candidate:")
    ]
    return {"candidates": candidates, "ufrag": ufrag, "revision": revision}
