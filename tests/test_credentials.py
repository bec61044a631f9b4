"""Server credentials: environment override, generated file, permissions, validation."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import stat

import pytest

from sfu.credentials import (
    Credentials,
    _write_new_file,
    generate,
    load_or_create,
    validate_sid,
)

AC = "AC" + "0123456789abcdef" * 2
SK = "SK" + "fedcba9876543210" * 2
ENV = {
    "SFU_ACCOUNT_SID": AC,
    "SFU_AUTH_TOKEN": "tok-" + "1" * 28,
    "SFU_API_KEY_SID": SK,
    "SFU_API_KEY_SECRET": "sec-" + "2" * 28,
}


def mode_of(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_environment_overrides_file(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    creds, path = load_or_create(data_dir, ENV)
    assert path is None
    assert creds == Credentials(AC, ENV["SFU_AUTH_TOKEN"], SK, ENV["SFU_API_KEY_SECRET"])
    assert not data_dir.exists()


def test_environment_wins_over_existing_file(tmp_path: pathlib.Path) -> None:
    generated, _ = load_or_create(tmp_path, {})
    creds, path = load_or_create(tmp_path, ENV)
    assert path is None and creds.account_sid == AC != generated.account_sid


@pytest.mark.parametrize(
    "present",
    [["SFU_ACCOUNT_SID"], ["SFU_ACCOUNT_SID", "SFU_AUTH_TOKEN", "SFU_API_KEY_SID"], ["SFU_API_KEY_SECRET"]],
)
def test_partial_environment_names_missing_vars(tmp_path: pathlib.Path, present: list[str]) -> None:
    env = {name: ENV[name] for name in present}
    with pytest.raises(ValueError) as info:
        load_or_create(tmp_path, env)
    text = str(info.value)
    for name in ENV:
        assert (name in text) == (name not in present), name
    for value in env.values():
        assert value not in text
    assert not (tmp_path / "credentials.json").exists()


def test_empty_environment_value_counts_as_missing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="SFU_AUTH_TOKEN"):
        load_or_create(tmp_path, {**ENV, "SFU_AUTH_TOKEN": ""})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SFU_ACCOUNT_SID", "AC123"),
        ("SFU_ACCOUNT_SID", SK),
        ("SFU_ACCOUNT_SID", "AC" + "0123456789ABCDEF" * 2),
        ("SFU_API_KEY_SID", AC),
        ("SFU_API_KEY_SID", SK + "0"),
    ],
)
def test_environment_bad_sid_is_rejected(tmp_path: pathlib.Path, var: str, value: str) -> None:
    with pytest.raises(ValueError, match="SID"):
        load_or_create(tmp_path, {**ENV, var: value})


def test_generated_file_is_private_and_stable(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "state" / "sfu"
    first, path = load_or_create(data_dir, {})
    assert path == data_dir / "credentials.json"
    assert mode_of(path) == 0o600
    assert mode_of(data_dir) == 0o700
    assert re.fullmatch(r"AC[0-9a-f]{32}", first.account_sid)
    assert re.fullmatch(r"SK[0-9a-f]{32}", first.api_key_sid)
    assert re.fullmatch(r"[0-9a-f]{32}", first.auth_token)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", first.api_key_secret)
    assert json.loads(path.read_text()) == {
        "account_sid": first.account_sid,
        "auth_token": first.auth_token,
        "api_key_sid": first.api_key_sid,
        "api_key_secret": first.api_key_secret,
    }
    second, path2 = load_or_create(data_dir, {})
    assert (second, path2) == (first, path)
    assert [p.name for p in data_dir.iterdir()] == ["credentials.json"]  # no temp files left


def test_generated_credentials_are_random() -> None:
    a, b = generate(), generate()
    assert a.account_sid != b.account_sid
    assert a.api_key_secret != b.api_key_secret


def test_loose_permissions_are_tightened(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    first, path = load_or_create(tmp_path, {})
    assert path is not None
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="sfu.credentials"):
        again, _ = load_or_create(tmp_path, {})
    assert again == first
    assert mode_of(path) == 0o600
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "644" in warnings[0].getMessage()


def test_private_file_logs_no_warning_and_no_secrets(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="sfu.credentials"):
        creds, _ = load_or_create(tmp_path, {})
        load_or_create(tmp_path, {})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert creds.account_sid in caplog.text
    assert creds.auth_token not in caplog.text
    assert creds.api_key_secret not in caplog.text


def test_existing_file_is_used_as_is(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "credentials.json"
    fields = {"account_sid": AC, "auth_token": "t", "api_key_sid": SK, "api_key_secret": "s"}
    path.write_text(json.dumps(fields))
    os.chmod(path, 0o600)
    assert load_or_create(tmp_path, {}) == (Credentials(AC, "t", SK, "s"), path)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"account_sid": AC, "auth_token": "t", "api_key_sid": SK}),
        json.dumps({"account_sid": "ACnope", "auth_token": "t", "api_key_sid": SK, "api_key_secret": "s"}),
        json.dumps({"account_sid": AC, "auth_token": "t", "api_key_sid": "SK" + "g" * 32, "api_key_secret": "s"}),
        json.dumps({"account_sid": AC, "auth_token": "", "api_key_sid": SK, "api_key_secret": "s"}),
    ],
)
def test_malformed_file_is_an_error_not_regenerated(tmp_path: pathlib.Path, content: str) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(ValueError):
        load_or_create(tmp_path, {})
    assert path.read_text() == content


def test_write_never_overwrites_existing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "credentials.json"
    first, second = generate(), generate()
    assert _write_new_file(path, first) is True
    assert _write_new_file(path, second) is False
    assert load_or_create(tmp_path, {})[0] == first
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]


def test_repr_hides_secrets() -> None:
    creds = Credentials(AC, "the-auth-token", SK, "the-key-secret")
    for text in (repr(creds), str(creds), f"{creds}"):
        assert "the-auth-token" not in text and "the-key-secret" not in text
        assert AC in text and SK in text


def test_credentials_are_frozen() -> None:
    creds = generate()
    with pytest.raises(AttributeError):
        creds.auth_token = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("prefix", "value", "ok"),
    [
        ("AC", AC, True),
        ("SK", SK, True),
        ("AC", SK, False),
        ("AC", "AC" + "0" * 31, False),
        ("AC", "AC" + "0" * 33, False),
        ("AC", "AC" + "0" * 31 + "G", False),
        ("AC", "AC" + "0" * 31 + "A", False),
        ("AC", AC + "\n", False),
        ("AC", "ac" + "0" * 32, False),
    ],
)
def test_validate_sid(prefix: str, value: str, ok: bool) -> None:
    assert validate_sid(prefix, value) is ok
