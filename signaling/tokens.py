"""Twilio-format access tokens (JWT, HS256), standard library only.

A token is ``base64url(header).base64url(payload).base64url(HMAC-SHA256(secret, first two))``
with header ``{"alg":"HS256","cty":"twilio-fpa;v=1","typ":"JWT"}`` and payload
``{"jti", "grants": {"video": {"room"?}, "identity"}, "iss", "exp", "nbf", "sub"}``.
:func:`mint_token` produces byte-for-byte what the official helper
(``twilio.jwt.access_token.AccessToken`` + ``VideoGrant``, which uses PyJWT) produces for the
same inputs and time, and :func:`verify_token` accepts the helper's tokens as they are.

Refusals raise :class:`TokenError` with the codes twilio-video clients know
(20101-20107, 53200). Tokens are bearer credentials: they are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from sfu import errors
from sfu.credentials import Credentials

__all__ = [
    "CONTENT_TYPE",
    "MAX_IDENTITY_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MAX_TTL",
    "TokenError",
    "VideoGrant",
    "check_room_grant",
    "mint_token",
    "verify_token",
]

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
CONTENT_TYPE = "twilio-fpa;v=1"
#: Longest token string accepted (longer -> 20101); real tokens are well under 1 KiB.
MAX_TOKEN_LENGTH = 16 * 1024
#: Twilio's limit on a participant identity (longer -> 53200).
MAX_IDENTITY_LENGTH = 256
#: Twilio's maximum access-token lifetime (24 h); a later ``exp`` -> 20104.
MAX_TTL = 24 * 3600

# Twilio's public messages for each code (as in twilio-video.js).
MESSAGES: dict[int, str] = {
    errors.TOKEN_INVALID: "Invalid Access Token",
    errors.TOKEN_HEADER_INVALID: "Invalid Access Token header",
    errors.TOKEN_ISSUER_INVALID: "Invalid Access Token issuer/subject",
    errors.TOKEN_EXPIRED: "Access Token expired or expiration date invalid",
    errors.TOKEN_NOT_YET_VALID: "Access Token not yet valid",
    errors.TOKEN_GRANTS_INVALID: "Invalid Access Token grants",
    errors.TOKEN_SIGNATURE_INVALID: "Invalid Access Token signature",
    errors.IDENTITY_INVALID: "Participant identity is invalid",
}

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(Exception):
    """An access token was refused.

    ``code`` is the Twilio error code, ``message`` the public message (safe to send to the
    client), ``status`` an HTTP-style status (401 authentication, 403 authorization) and
    ``detail`` an internal reason for logs (never contains the token or a secret).
    """

    def __init__(
        self, code: int, message: str | None = None, status: int = 401, detail: str = ""
    ) -> None:
        self.code = code
        self.message = message if message is not None else MESSAGES.get(code, "Invalid Access Token")
        self.status = status
        self.detail = detail
        super().__init__(f"{self.code}: {self.message}")


@dataclass(frozen=True)
class VideoGrant:
    """What a verified token allows: ``identity`` may join ``room`` (None: any room)."""

    identity: str
    room: str | None
    account_sid: str
    api_key_sid: str
    expires_at: float


# --------------------------------------------------------------------------- encoding


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes:
    """Strict base64url decode of an unpadded segment (ValueError on anything else)."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if _b64encode(data) != segment:  # non-zero padding bits: refuse malleable encodings
        raise ValueError("non-canonical base64url")
    return data


def _sign(signing_input: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()


def _json_compact(obj: Any, sort_keys: bool = False) -> bytes:
    # Same serialisation as PyJWT (compact separators, ASCII escapes; header keys sorted).
    return json.dumps(obj, separators=(",", ":"), sort_keys=sort_keys).encode("utf-8")


def _check_identity(identity: Any) -> None:
    """Raise ValueError unless identity is a non-empty, printable, <=256-char string."""
    if not isinstance(identity, str) or not identity:
        raise ValueError("identity must be a non-empty string")
    if len(identity) > MAX_IDENTITY_LENGTH:
        raise ValueError(f"identity longer than {MAX_IDENTITY_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in identity):
        raise ValueError("identity contains control characters or lone surrogates")


def mint_token(
    credentials: Credentials,
    identity: str,
    room: str | None = None,
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """Return a Twilio Video access token for ``identity`` (limited to ``room`` if given).

    Identical to ``AccessToken(account_sid, api_key_sid, secret, identity=identity, ttl=ttl)``
    with ``VideoGrant(room=room)`` minted at the same second: same header and key order,
    ``jti="{api_key_sid}-{now}"``, ``nbf=now``, ``exp=now+ttl``. Raises ValueError for an
    invalid identity, an empty room name or a ttl outside 1..86400.
    """
    _check_identity(identity)
    if room is not None and (not isinstance(room, str) or not room):
        raise ValueError("room must be a non-empty string or None")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be an integer in 1..{MAX_TTL}")
    issued = int(time.time() if now is None else now)
    video: dict[str, str] = {} if room is None else {"room": room}
    header = {"typ": "JWT", "alg": ALGORITHM, "cty": CONTENT_TYPE}
    payload = {
        "jti": f"{credentials.api_key_sid}-{issued}",
        "grants": {"video": video, "identity": identity},
        "iss": credentials.api_key_sid,
        "exp": issued + ttl,
        "nbf": issued,
        "sub": credentials.account_sid,
    }
    signing_input = (
        _b64encode(_json_compact(header, sort_keys=True))
        + "."
        + _b64encode(_json_compact(payload))
    ).encode("ascii")
    signature = _sign(signing_input, credentials.api_key_secret)
    return signing_input.decode("ascii") + "." + _b64encode(signature)


# --------------------------------------------------------------------------- verification


def _fail(code: int, detail: str, status: int = 401) -> TokenError:
    logger.debug("access token refused: %d (%s)", code, detail)
    return TokenError(code, status=status, detail=detail)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _load_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no duplicate keys, no NaN/Infinity."""
    return json.loads(
        raw.decode("utf-8"),
        object_pairs_hook=_no_duplicates,
        parse_constant=_reject_constant,
    )


def _is_number(value: Any) -> bool:
    """A JSON number usable as a timestamp (finite, and small enough to become a float)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**53
    return isinstance(value, float) and math.isfinite(value)


def verify_token(
    token: str,
    credentials: Credentials,
    now: float | None = None,
    leeway: int = 0,
    max_ttl: int | None = MAX_TTL,
) -> VideoGrant:
    """Verify a Twilio access token and return its Video grant, or raise :class:`TokenError`.

    Checks, in order (the first failure wins):

    * 20101 structure: not a string, longer than :data:`MAX_TOKEN_LENGTH`, not three
      base64url segments, header/payload not strict UTF-8 JSON (duplicate keys and
      NaN/Infinity refused), payload not an object, or ``iss``/``sub`` not strings or
      ``exp`` (``nbf`` if present) not a finite number;
    * 20102 header: not an object, ``alg`` not exactly ``HS256`` (so ``none`` and HS512 are
      refused), ``cty`` not ``twilio-fpa;v=1``, ``typ`` present but not ``JWT``, or a ``crit``
      header (no extensions are understood);
    * 20107 signature: HMAC-SHA256 with the API key secret, compared in constant time;
    * 20103 ``iss`` is not our API key SID or ``sub`` not our account SID;
    * 20104 expired (``exp <= now - leeway``) or, when ``max_ttl`` is set, ``exp`` more than
      ``max_ttl + leeway`` seconds ahead (Twilio caps tokens at 24 h);
    * 20105 ``nbf > now + leeway``;
    * 20106 grants: ``grants`` not an object, ``grants.video`` missing or not an object,
      ``identity`` missing/empty/not a string, or ``video.room`` present but not a non-empty
      string (``null`` means any room, as an omitted room does);
    * 53200 identity longer than 256 characters or containing control characters or lone
      surrogates (status 400). Twilio's
      SDKs also define 53201 (too long) / 53202 (bad characters), but our code table lists
      only 53200 ("Participant identity is invalid"), which every client handles.
    """
    # --- 20101 structure
    if not isinstance(token, str):
        raise _fail(errors.TOKEN_INVALID, "token is not a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _fail(errors.TOKEN_INVALID, f"token longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise _fail(errors.TOKEN_INVALID, "not a JWS compact serialization")
    try:
        header_raw = _b64decode(parts[0])
        payload_raw = _b64decode(parts[1])
        signature = _b64decode(parts[2])
        header = _load_json(header_raw)
        payload = _load_json(payload_raw)
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise _fail(errors.TOKEN_INVALID, f"undecodable token: {type(exc).__name__}") from None
    if not isinstance(payload, dict):
        raise _fail(errors.TOKEN_INVALID, "payload is not a JSON object")
    if not isinstance(payload.get("iss"), str) or not isinstance(payload.get("sub"), str):
        raise _fail(errors.TOKEN_INVALID, "payload lacks string iss/sub")
    if not _is_number(payload.get("exp")):
        raise _fail(errors.TOKEN_INVALID, "payload lacks a numeric exp")
    if "nbf" in payload and not _is_number(payload["nbf"]):
        raise _fail(errors.TOKEN_INVALID, "nbf is not a number")

    # --- 20102 header
    if not isinstance(header, dict):
        raise _fail(errors.TOKEN_HEADER_INVALID, "header is not a JSON object")
    if header.get("alg") != ALGORITHM:
        raise _fail(errors.TOKEN_HEADER_INVALID, f"unsupported alg {str(header.get('alg'))[:20]!r}")
    if header.get("cty") != CONTENT_TYPE:
        raise _fail(errors.TOKEN_HEADER_INVALID, "cty is not twilio-fpa;v=1")
    typ = header.get("typ", "JWT")
    if not isinstance(typ, str) or typ.upper() != "JWT":
        raise _fail(errors.TOKEN_HEADER_INVALID, "typ is not JWT")
    if "crit" in header:
        raise _fail(errors.TOKEN_HEADER_INVALID, "crit header not supported")

    # --- 20107 signature
    expected = _sign(f"{parts[0]}.{parts[1]}".encode("ascii"), credentials.api_key_secret)
    if not hmac.compare_digest(expected, signature):
        raise _fail(errors.TOKEN_SIGNATURE_INVALID, "signature mismatch")

    # --- 20103 issuer / subject
    if payload["iss"] != credentials.api_key_sid:
        raise _fail(errors.TOKEN_ISSUER_INVALID, "iss is not the configured API key SID")
    if payload["sub"] != credentials.account_sid:
        raise _fail(errors.TOKEN_ISSUER_INVALID, "sub is not the configured account SID")

    # --- 20104 / 20105 time
    current = time.time() if now is None else now
    exp = payload["exp"]
    if exp <= current - leeway:
        raise _fail(errors.TOKEN_EXPIRED, "token expired")
    if max_ttl is not None and exp > current + max_ttl + leeway:
        raise _fail(errors.TOKEN_EXPIRED, f"exp more than {max_ttl} s ahead")
    if "nbf" in payload and payload["nbf"] > current + leeway:
        raise _fail(errors.TOKEN_NOT_YET_VALID, "nbf in the future")

    # --- 20106 grants, 53200 identity
    grants = payload.get("grants")
    if not isinstance(grants, dict):
        raise _fail(errors.TOKEN_GRANTS_INVALID, "no grants object")
    video = grants.get("video")
    if not isinstance(video, dict):
        raise _fail(errors.TOKEN_GRANTS_INVALID, "no video grant")
    identity = grants.get("identity")
    if not isinstance(identity, str) or not identity:
        raise _fail(errors.TOKEN_GRANTS_INVALID, "no identity")
    try:
        _check_identity(identity)
    except ValueError as exc:
        raise _fail(errors.IDENTITY_INVALID, str(exc), status=400) from None
    room = video.get("room")
    if room is not None and (not isinstance(room, str) or not room):
        raise _fail(errors.TOKEN_GRANTS_INVALID, "video.room is not a non-empty string")

    return VideoGrant(
        identity=identity,
        room=room,
        account_sid=payload["sub"],
        api_key_sid=payload["iss"],
        expires_at=float(exp),
    )


def check_room_grant(grant: VideoGrant, room_name: str, room_sid: str | None = None) -> None:
    """Raise TokenError unless ``grant`` may join the room ``room_name`` (or ``room_sid``).

    A grant without a room allows any room; a grant naming a room (by unique name or, as
    Twilio allows, by room SID) allows only that room. A mismatch raises code 20106 "Access
    token grant does not allow room '<name>'" with status 403: the token itself is valid, but
    its *grants* do not cover this room, which is what 20106 (invalid grants) reports to
    twilio-video clients; 53104 (unable to connect) would hide the cause.
    """
    if grant.room is None or grant.room == room_name:
        return
    if room_sid is not None and grant.room == room_sid:
        return
    logger.info("identity %r refused: token grant is for another room", grant.identity)
    raise TokenError(
        errors.TOKEN_GRANTS_INVALID,
        f"Access token grant does not allow room '{room_name}'",
        status=403,
        detail="room grant mismatch",
    )
