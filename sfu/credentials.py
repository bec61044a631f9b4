"""Account credentials of the self-hosted server.

The server has exactly one Twilio-style account: an account SID (``AC`` + 32 hex) with its
auth token (REST Basic auth, status-callback signatures) and one API key (``SK`` + 32 hex) with
its secret (REST Basic auth, access-token signing).

They come from the environment (all four ``SFU_*`` variables) or from
``<data_dir>/credentials.json``, which is generated on first start with mode 0600.
Secrets are never logged and are hidden from ``repr()``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Mapping

__all__ = [
    "CREDENTIALS_FILENAME",
    "ENV_VARS",
    "Credentials",
    "CredentialsNotFound",
    "generate",
    "load",
    "load_or_create",
    "validate_sid",
]

logger = logging.getLogger(__name__)

CREDENTIALS_FILENAME = "credentials.json"

#: Environment variable for each :class:`Credentials` field, in field order.
ENV_VARS: dict[str, str] = {
    "account_sid": "SFU_ACCOUNT_SID",
    "auth_token": "SFU_AUTH_TOKEN",
    "api_key_sid": "SFU_API_KEY_SID",
    "api_key_secret": "SFU_API_KEY_SECRET",
}

_SID_BODY = re.compile(r"[0-9a-f]{32}")


def validate_sid(prefix: str, value: str) -> bool:
    """Return True if ``value`` is ``prefix`` followed by exactly 32 lowercase hex digits."""
    return (
        isinstance(value, str)
        and value.startswith(prefix)
        and _SID_BODY.fullmatch(value[len(prefix):]) is not None
    )


@dataclass(frozen=True, repr=False)
class Credentials:
    """The account SID / auth token and API key SID / secret of this server."""

    account_sid: str
    auth_token: str
    api_key_sid: str
    api_key_secret: str

    def __repr__(self) -> str:
        return (
            f"Credentials(account_sid={self.account_sid!r}, auth_token='***', "
            f"api_key_sid={self.api_key_sid!r}, api_key_secret='***')"
        )

    __str__ = __repr__

    def validate(self) -> None:
        """Raise ValueError if a SID is malformed or a secret is empty/not a string."""
        if not validate_sid("AC", self.account_sid):
            raise ValueError("account SID must be 'AC' followed by 32 lowercase hex digits")
        if not validate_sid("SK", self.api_key_sid):
            raise ValueError("API key SID must be 'SK' followed by 32 lowercase hex digits")
        for name in ("auth_token", "api_key_secret"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or value != value.strip():
                raise ValueError(f"{name} must be a non-empty string without surrounding spaces")

    def to_dict(self) -> dict[str, str]:
        """The four fields as a plain dict (contains secrets: never log it)."""
        return {
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "api_key_sid": self.api_key_sid,
            "api_key_secret": self.api_key_secret,
        }


def generate() -> Credentials:
    """Create fresh random credentials using :mod:`secrets`."""
    return Credentials(
        account_sid="AC" + secrets.token_hex(16),
        auth_token=secrets.token_hex(16),
        api_key_sid="SK" + secrets.token_hex(16),
        api_key_secret=secrets.token_urlsafe(24),  # 24 bytes -> exactly 32 url-safe chars
    )


def load_or_create(
    data_dir: pathlib.Path, environ: Mapping[str, str] | None = None
) -> tuple[Credentials, pathlib.Path | None]:
    """Return the server credentials and the file they live in (None when from the env).

    Precedence: all four ``SFU_*`` environment variables (empty counts as unset; a partial set
    is a ValueError naming the missing ones), else ``data_dir/credentials.json``, else freshly
    generated credentials written there atomically with mode 0600 (``data_dir`` is created with
    mode 0700). A malformed file is a ValueError; it is never silently regenerated, since that
    would invalidate every issued token and REST client.
    """
    try:
        return load(data_dir, environ)
    except CredentialsNotFound:
        pass
    data_dir = pathlib.Path(data_dir)
    path = data_dir / CREDENTIALS_FILENAME
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    creds = generate()
    if _write_new_file(path, creds):
        logger.info(
            "generated new credentials in %s (account %s, API key %s)",
            path,
            creds.account_sid,
            creds.api_key_sid,
        )
        return creds, path
    # Another process created the file between our check and our write: use theirs.
    return _read_file(path), path


class CredentialsNotFound(LookupError):
    """Neither the ``SFU_*`` environment variables nor a credentials file are there."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(f"no credentials: {path} does not exist and SFU_ACCOUNT_SID etc. are not set")
        self.path = path


def load(
    data_dir: pathlib.Path, environ: Mapping[str, str] | None = None
) -> tuple[Credentials, pathlib.Path | None]:
    """Like :func:`load_or_create` but never creates: raises :class:`CredentialsNotFound`.

    For commands that must use the credentials a running server uses (``sfu token``,
    ``sfu join``): fresh ones would sign tokens that server refuses (20107).
    """
    env = os.environ if environ is None else environ
    present = {field: env.get(var, "") for field, var in ENV_VARS.items()}
    missing = [ENV_VARS[field] for field, value in present.items() if not value]
    if len(missing) < len(ENV_VARS):
        if missing:
            raise ValueError(
                "incomplete credentials in the environment; missing: " + ", ".join(missing)
            )
        creds = Credentials(**present)
        creds.validate()
        logger.info(
            "using credentials from the environment (account %s, API key %s)",
            creds.account_sid,
            creds.api_key_sid,
        )
        return creds, None

    data_dir = pathlib.Path(data_dir)
    path = data_dir / CREDENTIALS_FILENAME
    if path.exists():
        return _read_file(path), path
    raise CredentialsNotFound(path)


def _read_file(path: pathlib.Path) -> Credentials:
    """Read and validate a credentials file, tightening loose permissions to 0600 first."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            logger.warning(
                "credentials file %s has permissions %o and could not be tightened: %s",
                path,
                mode,
                exc,
            )
        else:
            logger.warning(
                "credentials file %s had permissions %o; tightened to 600", path, mode
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read credentials file {path}: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ValueError(f"credentials file {path} must contain a JSON object")
    missing = [field for field in ENV_VARS if not isinstance(data.get(field), str)]
    if missing:
        raise ValueError(f"credentials file {path} lacks string field(s): {', '.join(missing)}")
    creds = Credentials(**{field: data[field] for field in ENV_VARS})
    try:
        creds.validate()
    except ValueError as exc:
        raise ValueError(f"credentials file {path}: {exc}") from None
    logger.info(
        "loaded credentials from %s (account %s, API key %s)",
        path,
        creds.account_sid,
        creds.api_key_sid,
    )
    return creds


def _write_new_file(path: pathlib.Path, creds: Credentials) -> bool:
    """Atomically create ``path`` (mode 0600) holding ``creds``; never overwrite.

    Writes a 0600 temp file in the same directory, fsyncs it, then hard-links it into place
    (fails if the target exists, so two racing processes agree on one set of credentials).
    Falls back to ``os.replace`` where hard links are unsupported. Returns False if the
    target already existed.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    payload = (json.dumps(creds.to_dict(), indent=2) + "\n").encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            if path.exists():
                return False
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: pathlib.Path) -> None:
    """Best-effort fsync of a directory so a rename/link survives a crash."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
