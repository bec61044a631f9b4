"""Access tokens: compatibility with the official twilio helper and every refusal code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from twilio.jwt import Jwt
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import ChatGrant
from twilio.jwt.access_token.grants import VideoGrant as HelperVideoGrant

from sfu.credentials import Credentials, generate
from signaling.tokens import (
    MAX_TOKEN_LENGTH,
    TokenError,
    VideoGrant,
    check_room_grant,
    mint_token,
    verify_token,
)

NOW = 1_800_000_000


@pytest.fixture
def creds() -> Credentials:
    return generate()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: Any,
    payload: Any,
    secret: str,
    digest: Any = hashlib.sha256,
    raw_payload: bytes | None = None,
) -> str:
    """Build and sign a JWT with arbitrary header/payload (digest=None: empty signature)."""
    h = b64(json.dumps(header).encode())
    p = b64(raw_payload if raw_payload is not None else json.dumps(payload).encode())
    sig = "" if digest is None else b64(hmac.new(secret.encode(), f"{h}.{p}".encode(), digest).digest())
    return f"{h}.{p}.{sig}"


def good_header() -> dict[str, str]:
    return {"typ": "JWT", "alg": "HS256", "cty": "twilio-fpa;v=1"}


def good_payload(c: Credentials, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "jti": f"{c.api_key_sid}-{NOW}",
        "grants": {"identity": "alice", "video": {"room": "DailyStandup"}},
        "iss": c.api_key_sid,
        "sub": c.account_sid,
        "nbf": NOW,
        "exp": NOW + 3600,
    }
    payload.update(overrides)
    return payload


def helper_token(c: Credentials, identity: str | None = "alice", room: str | None = None, **kw: Any) -> str:
    token = AccessToken(c.account_sid, c.api_key_sid, c.api_key_secret, identity=identity, **kw)
    token.add_grant(HelperVideoGrant(room=room))
    return token.to_jwt()


def refusal(token: Any, c: Credentials, now: float = NOW + 10, **kw: Any) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify_token(token, c, now=now, **kw)
    return info.value


# ------------------------------------------------------------------ helper compatibility


def test_helper_token_with_room_verifies(creds: Credentials) -> None:
    before = time.time()
    grant = verify_token(helper_token(creds, "alice", "DailyStandup", ttl=600), creds)
    assert grant == VideoGrant(
        identity="alice",
        room="DailyStandup",
        account_sid=creds.account_sid,
        api_key_sid=creds.api_key_sid,
        expires_at=grant.expires_at,
    )
    assert int(before) + 600 <= grant.expires_at <= time.time() + 600


def test_helper_token_without_room_allows_any_room(creds: Credentials) -> None:
    token = helper_token(creds, "bob")
    payload = Jwt.from_jwt(token, creds.api_key_secret).payload
    assert payload["grants"] == {"video": {}, "identity": "bob"}
    grant = verify_token(token, creds)
    assert (grant.identity, grant.room) == ("bob", None)
    check_room_grant(grant, "AnyRoom")


def test_helper_token_with_region_header_verifies(creds: Credentials) -> None:
    token = helper_token(creds, "carol", "R1", region="us1")
    assert Jwt.from_jwt(token, creds.api_key_secret).headers["twr"] == "us1"
    assert verify_token(token, creds).room == "R1"


@pytest.mark.parametrize("room", ["DailyStandup", None])
def test_mint_token_is_byte_identical_to_helper(
    creds: Credentials, room: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW + 0.75)
    theirs = helper_token(creds, "alice", room, ttl=900)
    ours = mint_token(creds, "alice", room, ttl=900, now=NOW + 0.75)
    assert ours == theirs


def test_mint_token_verifies_and_helper_decodes_it(creds: Credentials) -> None:
    token = mint_token(creds, "alice", "DailyStandup", ttl=600)
    grant = verify_token(token, creds)
    assert (grant.identity, grant.room, grant.account_sid, grant.api_key_sid) == (
        "alice",
        "DailyStandup",
        creds.account_sid,
        creds.api_key_sid,
    )
    decoded = Jwt.from_jwt(token, creds.api_key_secret)
    assert decoded.headers == {"alg": "HS256", "cty": "twilio-fpa;v=1", "typ": "JWT"}
    payload = decoded.payload
    assert payload["iss"] == creds.api_key_sid
    assert payload["sub"] == creds.account_sid
    assert payload["exp"] == payload["nbf"] + 600
    assert payload["jti"] == f"{creds.api_key_sid}-{payload['nbf']}"
    assert payload["grants"] == {"video": {"room": "DailyStandup"}, "identity": "alice"}


def test_mint_token_explicit_now_and_no_room(creds: Credentials) -> None:
    token = mint_token(creds, "dave", ttl=60, now=NOW + 0.9)
    grant = verify_token(token, creds, now=NOW + 59)
    assert (grant.room, grant.expires_at) == (None, NOW + 60)
    assert refusal(token, creds, now=NOW + 60).code == 20104


@pytest.mark.parametrize(
    "kwargs",
    [
        {"identity": ""},
        {"identity": "x" * 257},
        {"identity": "a\nb"},
        {"identity": "alice", "room": ""},
        {"identity": "alice", "ttl": 0},
        {"identity": "alice", "ttl": 86401},
    ],
)
def test_mint_token_rejects_bad_arguments(creds: Credentials, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        mint_token(creds, **kwargs)


# ------------------------------------------------------------------ refusals: 20101


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        ".eyJ9.",
        12345,
        None,
    ],
)
def test_garbage_is_20101(creds: Credentials, token: Any) -> None:
    err = refusal(token, creds)
    assert (err.code, err.message, err.status) == (20101, "Invalid Access Token", 401)


def test_payload_not_json_is_20101(creds: Credentials) -> None:
    token = forge(good_header(), None, creds.api_key_secret, raw_payload=b"{not json")
    assert refusal(token, creds).code == 20101


def test_payload_not_utf8_is_20101(creds: Credentials) -> None:
    token = forge(good_header(), None, creds.api_key_secret, raw_payload=b'{"iss":"\xff"}')
    assert refusal(token, creds).code == 20101


def test_payload_array_is_20101(creds: Credentials) -> None:
    assert refusal(forge(good_header(), [1, 2], creds.api_key_secret), creds).code == 20101


@pytest.mark.parametrize("missing", ["iss", "sub", "exp"])
def test_missing_registered_claim_is_20101(creds: Credentials, missing: str) -> None:
    payload = good_payload(creds)
    del payload[missing]
    assert refusal(forge(good_header(), payload, creds.api_key_secret), creds).code == 20101


@pytest.mark.parametrize("exp", ["9999999999", True, None, 10**30])
def test_non_numeric_exp_is_20101(creds: Credentials, exp: Any) -> None:
    token = forge(good_header(), good_payload(creds, exp=exp), creds.api_key_secret)
    assert refusal(token, creds).code == 20101


def test_infinite_exp_is_20101(creds: Credentials) -> None:
    raw = json.dumps(good_payload(creds, exp=0)).replace('"exp": 0', '"exp": Infinity').encode()
    assert b"Infinity" in raw
    token = forge(good_header(), None, creds.api_key_secret, raw_payload=raw)
    assert refusal(token, creds).code == 20101


def test_duplicate_claim_is_20101(creds: Credentials) -> None:
    raw = json.dumps(good_payload(creds)).encode()[:-1] + b', "sub": "ACother"}'
    token = forge(good_header(), None, creds.api_key_secret, raw_payload=raw)
    assert refusal(token, creds).code == 20101


def test_oversized_token_is_20101_even_if_validly_signed(creds: Credentials) -> None:
    big = good_payload(creds, padding="x" * MAX_TOKEN_LENGTH)
    token = forge(good_header(), big, creds.api_key_secret)
    assert len(token) > MAX_TOKEN_LENGTH
    assert refusal(token, creds).code == 20101
    # The same claims under the limit verify: the length alone caused the refusal.
    small = forge(good_header(), good_payload(creds, padding="x" * 1000), creds.api_key_secret)
    assert verify_token(small, creds, now=NOW + 10).identity == "alice"


def test_non_canonical_base64_signature_is_20101(creds: Credentials) -> None:
    token = forge(good_header(), good_payload(creds), creds.api_key_secret)
    head, _, sig = token.rpartition(".")
    # 32-byte signature -> 43 chars; the last char carries 2 unused bits. Flip one of them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tweaked = alphabet[alphabet.index(sig[-1]) ^ 1]
    assert base64.urlsafe_b64decode(sig + "=") == base64.urlsafe_b64decode(sig[:-1] + tweaked + "=")
    assert verify_token(token, creds, now=NOW + 10).identity == "alice"
    assert refusal(f"{head}.{sig[:-1]}{tweaked}", creds).code == 20101


# ------------------------------------------------------------------ refusals: 20102


def test_alg_none_is_20102(creds: Credentials) -> None:
    header = {"typ": "JWT", "alg": "none", "cty": "twilio-fpa;v=1"}
    token = forge(header, good_payload(creds), creds.api_key_secret, digest=None)
    assert token.endswith(".")
    err = refusal(token, creds)
    assert (err.code, err.message) == (20102, "Invalid Access Token header")


def test_alg_hs512_is_20102(creds: Credentials) -> None:
    header = {"typ": "JWT", "alg": "HS512", "cty": "twilio-fpa;v=1"}
    token = forge(header, good_payload(creds), creds.api_key_secret, digest=hashlib.sha512)
    assert refusal(token, creds).code == 20102


@pytest.mark.parametrize(
    "header",
    [
        {"typ": "JWT", "alg": "HS256"},
        {"typ": "JWT", "alg": "HS256", "cty": "twilio-fpa;v=2"},
        {"typ": "JWT", "alg": "hs256", "cty": "twilio-fpa;v=1"},
        {"typ": "JOSE+JSON", "alg": "HS256", "cty": "twilio-fpa;v=1"},
        {"typ": "JWT", "alg": "HS256", "cty": "twilio-fpa;v=1", "crit": ["exp"]},
        ["HS256"],
    ],
)
def test_bad_header_is_20102(creds: Credentials, header: Any) -> None:
    token = forge(header, good_payload(creds), creds.api_key_secret)
    assert refusal(token, creds).code == 20102


# ------------------------------------------------------------------ refusals: 20107


def test_wrong_secret_is_20107(creds: Credentials) -> None:
    other = generate()
    token = AccessToken(creds.account_sid, creds.api_key_sid, other.api_key_secret, identity="eve")
    token.add_grant(HelperVideoGrant(room="DailyStandup"))
    err = refusal(token.to_jwt(), creds, now=time.time())
    assert (err.code, err.message, err.status) == (20107, "Invalid Access Token signature", 401)


def test_tampered_payload_is_20107(creds: Credentials) -> None:
    token = helper_token(creds, "alice", "DailyStandup")
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["grants"]["identity"] = "admin"
    claims["grants"]["video"] = {}
    assert refusal(f"{head}.{b64(json.dumps(claims).encode())}.{sig}", creds, now=time.time()).code == 20107


def test_stripped_signature_is_20107(creds: Credentials) -> None:
    head, payload, _ = helper_token(creds).split(".")
    assert refusal(f"{head}.{payload}.", creds, now=time.time()).code == 20107


# ------------------------------------------------------------------ refusals: 20103


def test_wrong_issuer_is_20103(creds: Credentials) -> None:
    other_key = generate().api_key_sid
    token = AccessToken(creds.account_sid, other_key, creds.api_key_secret, identity="alice")
    token.add_grant(HelperVideoGrant())
    err = refusal(token.to_jwt(), creds, now=time.time())
    assert (err.code, err.message) == (20103, "Invalid Access Token issuer/subject")


def test_wrong_subject_is_20103(creds: Credentials) -> None:
    other_account = generate().account_sid
    token = AccessToken(other_account, creds.api_key_sid, creds.api_key_secret, identity="alice")
    token.add_grant(HelperVideoGrant())
    assert refusal(token.to_jwt(), creds, now=time.time()).code == 20103


# ------------------------------------------------------------------ refusals: 20104 / 20105


def test_expired_is_20104(creds: Credentials) -> None:
    token = helper_token(creds, ttl=60)
    exp = Jwt.from_jwt(token, creds.api_key_secret).payload["exp"]
    assert verify_token(token, creds, now=exp - 1).identity == "alice"
    err = refusal(token, creds, now=exp)  # exp <= now is expired
    assert (err.code, err.message) == (20104, "Access Token expired or expiration date invalid")
    assert refusal(token, creds, now=exp + 3600).code == 20104
    assert verify_token(token, creds, now=exp + 5, leeway=10).identity == "alice"


def test_lifetime_over_24h_is_20104(creds: Credentials) -> None:
    token = helper_token(creds, ttl=2 * 86400)
    assert refusal(token, creds, now=time.time()).code == 20104
    assert verify_token(token, creds, now=time.time(), max_ttl=None).identity == "alice"
    assert verify_token(helper_token(creds, ttl=86400), creds).identity == "alice"


def test_not_yet_valid_is_20105(creds: Credentials) -> None:
    now = int(time.time())
    token = helper_token(creds, nbf=now + 600)
    err = refusal(token, creds, now=now)
    assert (err.code, err.message) == (20105, "Access Token not yet valid")
    assert verify_token(token, creds, now=now + 600).identity == "alice"
    assert verify_token(token, creds, now=now + 590, leeway=10).identity == "alice"


# ------------------------------------------------------------------ refusals: 20106 / 53200


def test_no_video_grant_is_20106(creds: Credentials) -> None:
    token = AccessToken(creds.account_sid, creds.api_key_sid, creds.api_key_secret, identity="alice")
    token.add_grant(ChatGrant(service_sid="IS" + "0" * 32))
    err = refusal(token.to_jwt(), creds, now=time.time())
    assert (err.code, err.message) == (20106, "Invalid Access Token grants")


def test_no_identity_is_20106(creds: Credentials) -> None:
    token = helper_token(creds, identity=None, room="DailyStandup")
    assert "identity" not in Jwt.from_jwt(token, creds.api_key_secret).payload["grants"]
    assert refusal(token, creds, now=time.time()).code == 20106


@pytest.mark.parametrize(
    "grants",
    [
        None,
        "video",
        {"identity": "alice"},
        {"identity": "alice", "video": "DailyStandup"},
        {"identity": "", "video": {}},
        {"identity": 42, "video": {}},
        {"identity": ["alice"], "video": {}},
        {"identity": "alice", "video": {"room": 7}},
        {"identity": "alice", "video": {"room": ""}},
    ],
)
def test_bad_grants_are_20106(creds: Credentials, grants: Any) -> None:
    token = forge(good_header(), good_payload(creds, grants=grants), creds.api_key_secret)
    assert refusal(token, creds).code == 20106


def test_null_room_means_any_room(creds: Credentials) -> None:
    payload = good_payload(creds, grants={"identity": "alice", "video": {"room": None}})
    grant = verify_token(forge(good_header(), payload, creds.api_key_secret), creds, now=NOW + 10)
    assert grant.room is None


def test_identity_length_limit_is_53200(creds: Credentials) -> None:
    ok = verify_token(mint_token(creds, "a" * 256, now=NOW), creds, now=NOW + 1)
    assert ok.identity == "a" * 256
    token = helper_token(creds, identity="a" * 257)
    err = refusal(token, creds, now=time.time())
    assert (err.code, err.message, err.status) == (53200, "Participant identity is invalid", 400)


def test_identity_with_control_character_is_53200(creds: Credentials) -> None:
    token = helper_token(creds, identity="alice\x00admin")
    assert refusal(token, creds, now=time.time()).code == 53200


# ------------------------------------------------------------------ check order


def test_header_checked_before_signature(creds: Credentials) -> None:
    header = {"typ": "JWT", "alg": "HS512", "cty": "twilio-fpa;v=1"}
    assert refusal(forge(header, good_payload(creds), "wrong-secret"), creds).code == 20102


def test_signature_checked_before_claims(creds: Credentials) -> None:
    payload = good_payload(creds, iss="SK" + "0" * 32, exp=NOW - 10, grants={})
    assert refusal(forge(good_header(), payload, "wrong-secret"), creds).code == 20107


def test_issuer_checked_before_time(creds: Credentials) -> None:
    payload = good_payload(creds, sub="AC" + "0" * 32, exp=NOW - 10)
    assert refusal(forge(good_header(), payload, creds.api_key_secret), creds).code == 20103


def test_time_checked_before_grants(creds: Credentials) -> None:
    payload = good_payload(creds, exp=NOW - 10, grants={})
    assert refusal(forge(good_header(), payload, creds.api_key_secret), creds).code == 20104
    payload = good_payload(creds, nbf=NOW + 100, grants={})
    assert refusal(forge(good_header(), payload, creds.api_key_secret), creds).code == 20105


# ------------------------------------------------------------------ room grant


def _grant(room: str | None) -> VideoGrant:
    return VideoGrant("alice", room, "AC" + "1" * 32, "SK" + "2" * 32, NOW + 60.0)


def test_room_grant_allows_its_room_and_unrestricted_grants() -> None:
    check_room_grant(_grant("DailyStandup"), "DailyStandup")
    check_room_grant(_grant(None), "Anything")
    sid = "RM" + "3" * 32
    check_room_grant(_grant(sid), "DailyStandup", room_sid=sid)


def test_room_grant_for_other_room_is_20106_403() -> None:
    with pytest.raises(TokenError) as info:
        check_room_grant(_grant("DailyStandup"), "Retro")
    err = info.value
    assert (err.code, err.status) == (20106, 403)
    assert err.message == "Access token grant does not allow room 'Retro'"
    with pytest.raises(TokenError):
        check_room_grant(_grant("DailyStandup"), "dailystandup")  # names are case-sensitive


def test_token_error_str_carries_no_token(creds: Credentials) -> None:
    token = forge(good_header(), good_payload(creds), "wrong-secret")
    err = refusal(token, creds)
    assert str(err) == "20107: Invalid Access Token signature"
    assert token not in repr(err.args) and token not in err.detail
