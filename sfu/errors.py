"""Every Twilio error code the server sends, in one place (Twilio's "Programmable Video"
and REST error tables). ``sfu``, ``signaling`` and ``rest`` import their codes from here,
so a code is named once and a reader finds what each number means."""

from __future__ import annotations

# --- REST API (20xxx) -----------------------------------------------------------------------
INVALID_PARAMETER = 20001
AUTHENTICATION_FAILED = 20003
METHOD_NOT_ALLOWED = 20004
NOT_FOUND = 20404
INTERNAL_ERROR = 20500
SERVICE_UNAVAILABLE = 20503

# --- access tokens (20101-20107) ------------------------------------------------------------
TOKEN_INVALID = 20101
TOKEN_HEADER_INVALID = 20102
TOKEN_ISSUER_INVALID = 20103
TOKEN_EXPIRED = 20104
TOKEN_NOT_YET_VALID = 20105
TOKEN_GRANTS_INVALID = 20106
TOKEN_SIGNATURE_INVALID = 20107

# --- signaling (530xx) ----------------------------------------------------------------------
SIGNALING_ERROR = 53000  # also: a malformed ICE candidate
SIGNALING_MESSAGE_TOO_LARGE = 53000
SIGNALING_CONNECTION_LOST = 53001  # also: the server is shutting down
SESSION_NOT_FOUND = 53002  # no session to resume
SERVER_BUSY = 53006  # "Video server is busy": shedding, draining

# --- rooms (531xx) --------------------------------------------------------------------------
ROOM_NAME_INVALID = 53100
ROOM_NAME_TOO_LONG = 53101
ROOM_NAME_BAD_CHARACTERS = 53102
UNABLE_TO_CONNECT = 53104
ROOM_FULL = 53105  # "Room contains too many Participants"
MAX_PARTICIPANTS_INVALID = 53107
ROOM_TYPE_INVALID = 53108
TIMEOUT_INVALID = 53109
CALLBACK_METHOD_INVALID = 53110
CALLBACK_INVALID = 53111
STATUS_INVALID = 53112
ROOM_EXISTS = 53113
INCOMPATIBLE_WITH_TYPE = 53114
MEDIA_REGION_INVALID = 53115
ROOM_COMPLETED = 53118
RECORDING_RULES_INVALID = 53120
MAX_PARTICIPANT_DURATION_INVALID = 53123
AUDIO_ONLY_INVALID = 53124
TRACK_KIND_NOT_SUPPORTED = 53125

# --- participants (532xx) -------------------------------------------------------------------
IDENTITY_INVALID = 53200
MAX_TRACKS_EXCEEDED = 53203
PARTICIPANT_NOT_FOUND = 53204  # also: "Participant is not connected"
DUPLICATE_IDENTITY = 53205
INVALID_SUBSCRIBE_RULES = 53215
SESSION_LENGTH_EXCEEDED = 53216

# --- tracks (533xx) -------------------------------------------------------------------------
TRACK_INVALID = 53300
TRACK_NAME_DUPLICATED = 53304

# --- media negotiation and connection (534xx) -----------------------------------------------
CLIENT_LOCAL_DESCRIPTION_FAILED = 53400
CLIENT_REMOTE_DESCRIPTION_FAILED = 53402
SERVER_REMOTE_DESCRIPTION_FAILED = 53403  # the client's answer could not be applied
NO_SUPPORTED_CODEC = 53404  # the answer rejected the m-section (no codec in common)
MEDIA_CONNECTION_FAILED = 53405  # also: the media process carrying the participant died
