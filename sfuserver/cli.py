"""The ``sfu`` command: ``sfu serve`` runs the server, ``sfu token`` prints an access token."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.metadata
import ipaddress
import logging
import os
import resource
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
from aiohttp import web
from aiortc import RTCIceServer

from sfu.credentials import ENV_VARS as CREDENTIAL_ENV_VARS
from sfu.credentials import Credentials, CredentialsNotFound, load, load_or_create
from signaling.tokens import MAX_TTL, mint_token
from sfu.store import DataDirLocked, lock_data_dir

from sfu.workers.pool import WorkerStartError

from . import logs
from .app import ServerConfig, UdpPortUnavailable, build_app

logger = logging.getLogger("sfu")


def _ice_server(value: str) -> RTCIceServer:
    """``stun:host:port`` or ``turn:user:password@host:port[?transport=tcp]``."""
    scheme, _, rest = value.partition(":")
    if scheme not in ("stun", "turn", "turns") or not rest:
        raise argparse.ArgumentTypeError(f"not a STUN/TURN URL: {value}")
    if "@" in rest:
        auth, _, where = rest.rpartition("@")
        user, _, password = auth.partition(":")
        return RTCIceServer(urls=f"{scheme}:{where}", username=user, credential=password)
    return RTCIceServer(urls=value)


class CLIError(Exception):
    """A problem the user can fix: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default; omits "(default: None)" and "(default: [])"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default == [] or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _integer(low: int, high: int | None = None, unit: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (no upper bound when ``high`` is None)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < low or (high is not None and number > high):
            bounds = f"{low}..{high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}{unit}, not {number}")
        return number

    return parse


_port = _integer(1, 65535)
_udp_port = _integer(0, 65535, " (0: a port the OS chooses)")
_positive_int = _integer(1)
_non_negative_int = _integer(0)
_ttl = _integer(1, MAX_TTL, " seconds (at most 24 h)")


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {value!r}") from None


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {value}")
    return number


def _identity(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("twilio-compatible-sfu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sfu", description="Self-hosted Twilio-Video-compatible SFU", formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the server (signaling, REST, media)", formatter_class=_Formatter,
                           epilog="Every option can also be set by an environment variable SFU_<OPTION> (shown "
                                  "with each option): e.g. SFU_PORT=8443, SFU_ICE_SERVER='stun:a:3478 stun:b:3478', "
                                  "SFU_DEV_TOKENS=false. A flag on the command line wins over its variable.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only by default)")
    serve.add_argument("--port", type=_port, default=8080, help="TCP port for HTTP and websockets")
    serve.add_argument("--udp-port", type=_udp_port, default=7882,
                       help="the one UDP port of all media, bound on every interface (0: one the OS chooses); with "
                            "--workers N above 1, the first of N ports (worker i binds this + i)")
    serve.add_argument("--udp-host", type=_ip_address, metavar="ADDRESS",
                       help="bind the media UDP port to this address only (default: every interface); host "
                            "candidates then carry it, unless --announced-address")
    serve.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                       help="media worker processes (one per core by default): worker i owns the media of the rooms "
                            "placed on it on UDP port --udp-port + i; 1 keeps all media in the server process")
    serve.add_argument("--room-capacity", type=_positive_int, default=None, metavar="N",
                       help="with --workers above 1: participants of one room a worker takes before the room spills "
                            "onto another worker, which receives each of the room's tracks once over a local pipe "
                            "(default: a room stays on one worker)")
    serve.add_argument("--data-dir", type=Path, default=Path("./data"), help="credentials and database")
    serve.add_argument("--ice-server", type=_ice_server, action="append", default=[], metavar="URL",
                       help="STUN/TURN server (repeatable; none by default). The server's own connections use STUN "
                            "ones; TURN ones are for clients (sdk.js iceServers) unless --server-ice-relay")
    serve.add_argument("--server-ice-relay", choices=("off", "fallback", "only"), default="off",
                       help="let the server's own connections use the --ice-server TURN server: 'fallback' adds "
                            "relayed candidates, 'only' uses nothing else (default: off, host candidates only)")
    serve.add_argument("--turn-secret", metavar="SECRET",
                       help="coturn's static-auth-secret: each participant gets its own time-limited credential for "
                            "the --ice-server TURN URLs given without user:password (prefer SFU_TURN_SECRET: a command "
                            "line is visible to every user of the machine)")
    serve.add_argument("--turn-ttl", type=_positive_int, default=86400, metavar="SECONDS",
                       help="how long a --turn-secret credential stays valid")
    serve.add_argument("--announced-address", type=_ip_address,
                       help="public IP address to put in host ICE candidates (1:1 NAT)")
    serve.add_argument("--reconnect-grace", type=_non_negative_float, default=5.0,
                       help="seconds a participant whose websocket dropped may resume before removal")
    serve.add_argument("--retransmission-cache", type=_positive_int, default=512, metavar="PACKETS",
                       help="packets kept per video track to answer subscribers' NACKs")
    serve.add_argument("--dev-tokens", action=argparse.BooleanOptionalAction, default=None,
                       help="POST /dev/token hands out access tokens to anyone (for the bundled page; not for "
                            "production). Default: on only when --host is a loopback address")
    serve.add_argument("--max-participants", type=_positive_int, default=None, metavar="N",
                       help="participants allowed in a room created on connect (default 50, Twilio's group-room cap)")
    serve.add_argument("--status-callback", metavar="URL",
                       help="default status callback URL for rooms that set none (e.g. ad-hoc rooms), signed like Twilio's")
    serve.add_argument("--status-callback-public-only", action="store_true",
                       help="refuse status callback URLs whose host is or resolves to a loopback, link-local, "
                            "private or other non-public address (checked at each delivery)")
    serve.add_argument("--drain-timeout", type=_non_negative_float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, refuse new participants and rooms and let calls go on for up to this long "
                            "(0: stop at once; a second SIGTERM/SIGINT stops at once)")
    serve.add_argument("--allowed-origin", dest="allowed_origins", action="append", default=[], metavar="ORIGIN",
                       help="browser Origin allowed to open /signaling, e.g. https://app.example.com "
                            "(repeatable; none given: any Origin)")
    serve.add_argument("--max-connections-per-ip", type=_non_negative_int, default=32, metavar="N",
                       help="websockets not yet authenticated per client address (0: no cap; behind a reverse proxy "
                            "every client has the proxy's address)")
    serve.add_argument("--max-unauthenticated", type=_non_negative_int, default=256, metavar="N",
                       help="websockets not yet authenticated in all; past it the oldest is closed (0: no cap)")
    serve.add_argument("--log-level", default="INFO", type=str.upper, choices=logs.LEVELS, help="log level")
    serve.add_argument("--log-format", default="text", choices=logs.FORMATS,
                       help="text lines, or one JSON object per line (time, level, logger, message)")

    joiner = sub.add_parser("join", help="join a room as a headless participant (synthetic camera, tone, chat from stdin)",
                            formatter_class=_Formatter)
    joiner.add_argument("--url", default="ws://127.0.0.1:8080/signaling", help="the server's signaling URL")
    joiner.add_argument("--token", help="access token (default: minted from the data dir's credentials)")
    joiner.add_argument("--identity", type=_identity, help="identity for a minted token")
    joiner.add_argument("--room", help="room name")
    joiner.add_argument("--duration", type=_non_negative_float, default=None, help="leave after this many seconds")
    joiner.add_argument("--data-dir", type=Path, default=Path("./data"),
                        help="where `sfu serve` keeps its credentials (env SFU_DATA_DIR; or the SFU_* credential variables)")

    token = sub.add_parser("token", help="print an access token", formatter_class=_Formatter)
    token.add_argument("--identity", required=True, type=_identity, help="the participant's identity")
    token.add_argument("--room", default=None, help="restrict the token to this room")
    token.add_argument("--ttl", type=_ttl, default=3600, help=f"seconds the token is valid (max {MAX_TTL})")
    token.add_argument("--data-dir", type=Path, default=Path("./data"),
                       help="where `sfu serve` keeps its credentials (env SFU_DATA_DIR; or the SFU_* credential variables)")
    _document_env(serve)
    return p


# --- options from the environment ------------------------------------------------------------

_UNSET: Any = object()
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_name(action: argparse.Action) -> str:
    """``--data-dir`` -> ``SFU_DATA_DIR``."""
    return "SFU_" + action.dest.upper()


def _env_actions(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of ``sub`` that an environment variable may set (all but --help/--version)."""
    actions = [a for a in sub._actions if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
    clash = {env_name(a) for a in actions} & set(CREDENTIAL_ENV_VARS.values())
    if clash:  # the credential variables mean something else (sfu/credentials.py)
        raise RuntimeError(f"option variable(s) {', '.join(sorted(clash))} collide with the credential variables")
    return actions


def _document_env(sub: argparse.ArgumentParser) -> None:
    for action in _env_actions(sub):
        action.help = f"{action.help or ''} [env {env_name(action)}]".strip()


def _subparser(p: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _given(sub: argparse.ArgumentParser, argv: Sequence[str], actions: list[argparse.Action]) -> set[str]:
    """The dests of ``actions`` set on the command line ``argv`` (already known to parse)."""
    probe = argparse.Namespace()
    for action in actions:  # argparse leaves an attribute that is already there alone when not given
        setattr(probe, action.dest, None if isinstance(action, argparse._AppendAction) else _UNSET)
    sub.parse_known_args(list(argv), probe)
    return {
        a.dest for a in actions
        if getattr(probe, a.dest) is not _UNSET and not (isinstance(a, argparse._AppendAction) and getattr(probe, a.dest) is None)
    }


def _from_env(sub: argparse.ArgumentParser, action: argparse.Action, raw: str) -> Any:
    """Convert one variable's text the way the option's own flag would be converted."""
    name = env_name(action)
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction, argparse._StoreFalseAction)):
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            sub.error(f"{name}: expected true or false, not {raw!r}")
        yes = word in _TRUE
        return (not yes) if isinstance(action, argparse._StoreFalseAction) else yes
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        items = raw.replace(",", " ").split()
        return [_convert(sub, action, name, item) for item in items]
    return _convert(sub, action, name, raw.strip())


def _convert(sub: argparse.ArgumentParser, action: argparse.Action, name: str, text: str) -> Any:
    try:
        value = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        sub.error(f"{name}: {exc}")
    if action.choices is not None and value not in action.choices:
        sub.error(f"{name}: {text!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def apply_env(
    p: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace, environ: Mapping[str, str],
    only: Sequence[str] | None = None,
) -> None:
    """Fill the options of ``args.command`` not given on the command line from ``SFU_<DEST>``.

    Generic over the subcommand's actions, so every option added to ``serve`` gets its
    variable. ``only`` limits it to some dests (``token``/``join`` read just SFU_DATA_DIR).
    """
    sub = _subparser(p, args.command)
    actions = [a for a in _env_actions(sub) if only is None or a.dest in only]
    wanted = [a for a in actions if environ.get(env_name(a), "").strip()]
    if not wanted:
        return
    rest = list(argv)[list(argv).index(args.command) + 1:]
    given = _given(sub, rest, actions)
    for action in wanted:
        if action.dest not in given:
            setattr(args, action.dest, _from_env(sub, action, environ[env_name(action)]))


# --- the commands ------------------------------------------------------------------------------


def _credentials(command: str, data_dir: Path) -> Credentials:
    """The credentials a server uses (never new ones: tokens they sign would be refused)."""
    try:
        credentials, path = load(data_dir)
    except CredentialsNotFound as exc:
        raise CLIError(
            f"no credentials: {exc.path.resolve()} does not exist and SFU_ACCOUNT_SID, SFU_AUTH_TOKEN, "
            f"SFU_API_KEY_SID and SFU_API_KEY_SECRET are not set (give the server's --data-dir; "
            f"`sfu serve` creates them on first start)"
        ) from None
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    where = str(path.resolve()) if path is not None else "the SFU_* environment variables"
    print(f"sfu {command}: using credentials from {where} (account {credentials.account_sid})", file=sys.stderr)
    return credentials


def _check_data_dir(data_dir: Path) -> None:
    """Create the data dir if needed and prove it is writable, or raise CLIError naming it."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=data_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CLIError(f"data dir {data_dir.resolve()} is not writable: {exc.strerror or exc}") from None


def raise_open_file_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: each participant holds sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return
        logger.info("raised the open-file limit (RLIMIT_NOFILE) from %d to %d", soft, target)
    else:
        logger.debug("open-file limit (RLIMIT_NOFILE) is %s", soft)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    prog = f"sfu {args.command}"
    try:
        apply_env(p, argv, args, os.environ, only=None if args.command == "serve" else ("data_dir",))
        if args.command == "token":
            credentials = _credentials(args.command, args.data_dir)
            print(mint_token(credentials, args.identity, room=args.room, ttl=args.ttl))
            return 0
        if args.command == "join":
            return _join(args)
        return _serve(args)
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _join(args: argparse.Namespace) -> int:
    from .join import join

    token = args.token
    if token is None:
        if not args.identity:
            raise CLIError("give --token, or --identity to mint one from the server's credentials")
        credentials = _credentials("join", args.data_dir)
        token = mint_token(credentials, args.identity, room=args.room)
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    try:
        return uvloop.run(join(args.url, token, args.room, args.duration))
    except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
        raise CLIError(f"cannot reach {args.url}: {exc or type(exc).__name__}") from None


def _serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    _check_data_dir(args.data_dir)
    raise_open_file_limit()
    turn = [server.urls for server in args.ice_server if str(server.urls).startswith("turn")]
    if args.server_ice_relay != "off" and not turn:
        raise CLIError("--server-ice-relay needs a TURN server (--ice-server turn:USER:PASS@HOST:PORT)")
    minted = [s.urls for s in args.ice_server if str(s.urls).startswith("turn") and s.username is None]
    if minted and not args.turn_secret:
        raise CLIError(f"--ice-server {minted[0]} has no user:password: add them, or give --turn-secret")
    if args.turn_secret and not minted:
        raise CLIError("--turn-secret needs a TURN server without user:password (--ice-server turn:HOST:PORT)")
    if minted and args.server_ice_relay != "off":
        raise CLIError("--server-ice-relay needs a TURN server with its own user:password (not --turn-secret)")
    if turn and args.server_ice_relay == "off":
        logger.info("the server's own connections do not relay through %s (give it to clients, "
                    "or see --server-ice-relay)", ", ".join(map(str, turn)))
    if args.udp_port and args.udp_port + args.workers - 1 > 65535:
        raise CLIError(f"--udp-port {args.udp_port} with --workers {args.workers} needs ports up to "
                       f"{args.udp_port + args.workers - 1}, past 65535")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        udp_port=args.udp_port,
        udp_host=args.udp_host,
        workers=args.workers,
        room_capacity=args.room_capacity,
        data_dir=args.data_dir,
        ice_servers=args.ice_server,
        server_ice_relay=args.server_ice_relay,
        turn_secret=args.turn_secret,
        turn_ttl=args.turn_ttl,
        announced_address=args.announced_address,
        reconnect_grace=args.reconnect_grace,
        dev_tokens=args.dev_tokens,
        retransmission_cache=args.retransmission_cache,
        status_callback=args.status_callback,
        max_participants=args.max_participants,
        status_callback_public_only=args.status_callback_public_only,
        drain_timeout=args.drain_timeout,
        allowed_origins=args.allowed_origins,
        max_connections_per_ip=args.max_connections_per_ip,
        max_unauthenticated=args.max_unauthenticated,
    )
    import uvloop

    try:
        uvloop.run(serve(config))
    except DataDirLocked as exc:
        raise CLIError(str(exc)) from None
    return 0


async def serve(config: ServerConfig) -> None:
    data_lock = lock_data_dir(config.data_dir)  # held until serve returns (or the process dies)
    try:
        credentials, path = load_or_create(config.data_dir)
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot use the credentials in {config.data_dir.resolve()}: {exc}") from None
    if path is not None:
        logger.info("credentials (account %s, API key %s) are in %s", credentials.account_sid, credentials.api_key_sid, path)
    else:
        logger.info("credentials from SFU_* environment variables (account %s)", credentials.account_sid)
    app = build_app(config, credentials)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
    except (UdpPortUnavailable, WorkerStartError) as exc:
        await runner.cleanup()
        raise CLIError(str(exc)) from None
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise CLIError(f"cannot listen on {config.host}:{config.port}: {reason}") from None
    logger.info("listening on http://%s:%d (signaling at /signaling)", config.host, config.port)
    from .web import DEV_TOKEN_PATH, dev_tokens_enabled

    if dev_tokens_enabled(config.host, config.dev_tokens):
        logger.warning("development token endpoint POST %s is on: anyone who reaches it can join any room "
                       "(not for production; --no-dev-tokens turns it off)", DEV_TOKEN_PATH)
    from .drain import wait_for_stop

    await wait_for_stop(app, config.drain_timeout)  # SIGTERM drains first (sfuserver/drain.py)
    logger.info("shutting down")
    await runner.cleanup()
    data_lock.close()


if __name__ == "__main__":
    sys.exit(main())
