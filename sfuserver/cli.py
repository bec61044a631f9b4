"""The ``sfu`` command: ``sfu serve`` runs the server, ``sfu token`` prints an access token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web
from aiortc import RTCIceServer

from sfu.credentials import load_or_create
from signaling.tokens import mint_token

from .app import ServerConfig, build_app

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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sfu", description="Self-hosted Twilio-Video-compatible SFU")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (signaling, REST, media)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data-dir", type=Path, default=Path("./data"), help="credentials and database")
    serve.add_argument("--ice-server", type=_ice_server, action="append", default=[], metavar="URL",
                       help="STUN/TURN server for the server's peer connections (repeatable; none by default)")
    serve.add_argument("--announced-address", help="public address to put in host ICE candidates (1:1 NAT)")
    serve.add_argument("--reconnect-grace", type=float, default=5.0,
                       help="seconds a participant whose websocket dropped may resume before removal")
    serve.add_argument("--retransmission-cache", type=int, default=512, metavar="PACKETS",
                       help="packets kept per video track to answer subscribers' NACKs")
    serve.add_argument("--dev-tokens", action=argparse.BooleanOptionalAction, default=None,
                       help="POST /dev/token hands out access tokens to anyone (for the bundled page; not for "
                            "production). Default: on only when --host is a loopback address")
    serve.add_argument("--max-participants", type=int, default=None, metavar="N",
                       help="participants allowed in a room created on connect (default 50, Twilio's group-room cap)")
    serve.add_argument("--status-callback", metavar="URL",
                       help="default status callback URL for rooms that set none (e.g. ad-hoc rooms), signed like Twilio's")
    serve.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, refuse new participants and rooms and let calls go on for up to this long "
                            "(0: stop at once; a second SIGTERM/SIGINT stops at once)")
    serve.add_argument("--allowed-origin", dest="allowed_origins", action="append", default=[], metavar="ORIGIN",
                       help="browser Origin allowed to open /signaling, e.g. https://app.example.com "
                            "(repeatable; none given: any Origin)")
    serve.add_argument("--max-connections-per-ip", type=int, default=32, metavar="N",
                       help="websockets not yet authenticated per client address (0: no cap; behind a reverse proxy "
                            "every client has the proxy's address)")
    serve.add_argument("--max-unauthenticated", type=int, default=256, metavar="N",
                       help="websockets not yet authenticated in all; past it the oldest is closed (0: no cap)")
    serve.add_argument("--log-level", default=os.environ.get("SFU_LOG_LEVEL", "INFO"))

    joiner = sub.add_parser("join", help="join a room as a headless participant (synthetic camera, tone, chat from stdin)")
    joiner.add_argument("--url", default="ws://127.0.0.1:8080/signaling")
    joiner.add_argument("--token", help="access token (default: minted from the data dir's credentials)")
    joiner.add_argument("--identity", help="identity for a minted token")
    joiner.add_argument("--room", help="room name")
    joiner.add_argument("--duration", type=float, default=None, help="leave after this many seconds")
    joiner.add_argument("--data-dir", type=Path, default=Path("./data"))

    token = sub.add_parser("token", help="print an access token")
    token.add_argument("--identity", required=True)
    token.add_argument("--room", default=None, help="restrict the token to this room")
    token.add_argument("--ttl", type=int, default=3600, help="seconds (max 86400)")
    token.add_argument("--data-dir", type=Path, default=Path("./data"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "token":
        credentials, _ = load_or_create(args.data_dir)
        print(mint_token(credentials, args.identity, room=args.room, ttl=args.ttl))
        return 0
    if args.command == "join":
        from .join import join

        token = args.token
        if token is None:
            if not args.identity:
                raise SystemExit("sfu join: give --token, or --identity to mint one from the data dir")
            credentials, _ = load_or_create(args.data_dir)
            token = mint_token(credentials, args.identity, room=args.room)
        logging.basicConfig(level=logging.WARNING)
        import uvloop

        return uvloop.run(join(args.url, token, args.room, args.duration))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        ice_servers=args.ice_server,
        announced_address=args.announced_address,
        reconnect_grace=args.reconnect_grace,
        dev_tokens=args.dev_tokens,
        retransmission_cache=args.retransmission_cache,
        status_callback=args.status_callback,
        max_participants=args.max_participants,
        drain_timeout=args.drain_timeout,
        allowed_origins=args.allowed_origins,
        max_connections_per_ip=args.max_connections_per_ip,
        max_unauthenticated=args.max_unauthenticated,
    )
    import uvloop

    uvloop.run(serve(config))
    return 0


async def serve(config: ServerConfig) -> None:
    credentials, path = load_or_create(config.data_dir)
    if path is not None:
        logger.info("credentials (account %s, API key %s) are in %s", credentials.account_sid, credentials.api_key_sid, path)
    else:
        logger.info("credentials from SFU_* environment variables (account %s)", credentials.account_sid)
    app = build_app(config, credentials)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    logger.info("listening on http://%s:%d (signaling at /signaling)", config.host, config.port)
    from .web import DEV_TOKEN_PATH, dev_tokens_enabled

    if dev_tokens_enabled(config.host, config.dev_tokens):
        logger.warning("development token endpoint POST %s is on: anyone who reaches it can join any room "
                       "(not for production; --no-dev-tokens turns it off)", DEV_TOKEN_PATH)
    from .drain import wait_for_stop

    await wait_for_stop(app, config.drain_timeout)  # SIGTERM drains first (sfuserver/drain.py)
    logger.info("shutting down")
    await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
