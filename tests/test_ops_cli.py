"""Operating the `sfu` command: one-line errors, credentials for `sfu token`/`sfu join`, help,
version, options from SFU_* variables, the open-file limit, and the logs `sfu serve` writes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import resource
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from sfu.credentials import ENV_VARS, load_or_create
from sfuserver import cli
from signaling.client import connect
from signaling.tokens import verify_token

from .conftest import DEADLINE, Server, wait_for
from .helpers.clients import media_tracks, subscribed_media
from .test_signaling_cli import SFU, clean_env, free_port

START_DEADLINE = 3 * DEADLINE  # a cold `sfu serve` imports aiortc, av, numpy: slow on a loaded machine


def run_sfu(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SFU), *args], capture_output=True, text=True, timeout=START_DEADLINE, cwd=cwd,
        env=clean_env() if env is None else env, stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- one-line errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("serve", "--port", "70000"), "--port"),
        (("serve", "--port", "0"), "--port"),
        (("token", "--identity", "alice", "--ttl", "999999"), "--ttl"),
        (("token", "--identity", "", "--ttl", "60"), "--identity"),
        (("join", "--identity", "  "), "--identity"),
        (("serve", "--log-level", "verbose"), "--log-level"),
        (("serve", "--log-format", "xml"), "--log-format"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, netns: None, args: tuple[str, ...], needle: str) -> None:
    done = run_sfu(*args, "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    assert_one_line_error(done, needle)
    assert not (tmp_path / "data").exists()


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path, netns: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_sfu("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # (the INFO lines before it are the normal start-up log)
    assert last == f"sfu serve: error: cannot listen on 127.0.0.1:{port}: address already in use", done.stderr


def test_an_unwritable_data_dir_is_a_one_line_error_naming_it(tmp_path: Path, netns: None) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data"
    done = run_sfu("serve", "--port", str(free_port()), "--data-dir", str(data_dir))
    assert_one_line_error(done, str(data_dir), "not writable")
    if os.geteuid() != 0:  # root writes anywhere: only a non-root run can try a read-only directory
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o500)
        done = run_sfu("serve", "--port", str(free_port()), "--data-dir", str(read_only))
        assert_one_line_error(done, str(read_only), "not writable")


def test_join_to_an_unreachable_server_is_a_one_line_error(tmp_path: Path, netns: None) -> None:
    url = f"ws://127.0.0.1:{free_port()}/signaling"  # nothing listens there
    done = run_sfu("join", "--url", url, "--token", "a.b.c")
    assert done.returncode == 1
    assert_one_line_error(done, "cannot reach", url)


def credential_env(server: Server) -> dict[str, str]:
    env = clean_env()
    for attribute, variable in ENV_VARS.items():
        env[variable] = getattr(server.credentials, attribute)
    return env


async def test_ctrl_c_in_join_leaves_the_room_without_a_traceback(server: Server, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(SFU), "join", "--url", server.url, "--identity", "carol", "--room", "ctrlc",
        env=credential_env(server), cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        # `sfu join` prints "joined room" once `connected` arrived, which the server sends
        # only after storing the participant: wait for that line, not for the registry.
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), START_DEADLINE)
        room = server.registry.find_in_progress("ctrlc")
        assert room is not None and room.find_participant("carol") is not None
        process.send_signal(signal.SIGINT)
        rest, stderr = await asyncio.wait_for(process.communicate(), START_DEADLINE)
        stdout = first + rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode in (0, 130), stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    assert b"joined room ctrlc" in stdout
    # It left the room.
    await wait_for(lambda: server.registry.find_in_progress("ctrlc") is None, DEADLINE, "carol to leave")


# --- credentials for sfu token / sfu join ----------------------------------------------------------


def test_token_elsewhere_refuses_without_credentials_and_creates_none(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_sfu("token", "--identity", "alice", cwd=elsewhere)
    line = assert_one_line_error(done, "no credentials", str(elsewhere / "data" / "credentials.json"))
    assert "SFU_API_KEY_SID" in line
    assert done.stdout == ""
    assert not (elsewhere / "data").exists()


def test_join_minting_refuses_without_credentials_and_creates_none(tmp_path: Path) -> None:
    done = run_sfu("join", "--identity", "alice", "--url", f"ws://127.0.0.1:{free_port()}/signaling", cwd=tmp_path)
    assert_one_line_error(done, "no credentials")
    assert not (tmp_path / "data").exists()


def test_token_says_which_credentials_it_used(server: Server, tmp_path: Path) -> None:
    # From the environment (from any directory).
    done = run_sfu("token", "--identity", "alice", "--room", "r", cwd=tmp_path, env=credential_env(server))
    assert done.returncode == 0, done.stderr
    assert verify_token(done.stdout.strip(), server.credentials).identity == "alice"
    assert "using credentials from the SFU_* environment variables" in done.stderr
    assert not (tmp_path / "data").exists()


async def test_token_from_another_directory_reads_the_servers_data_dir(served_with_log: "Served", tmp_path: Path) -> None:
    served = served_with_log
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_sfu("token", "--identity", "dave", "--room", "r", "--data-dir", str(served.data_dir), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert f"using credentials from {(served.data_dir / 'credentials.json').resolve()}" in done.stderr
    # SFU_DATA_DIR works for it too.
    env = clean_env() | {"SFU_DATA_DIR": str(served.data_dir)}
    again = run_sfu("token", "--identity", "erin", "--room", "r", cwd=elsewhere, env=env)
    assert again.returncode == 0, again.stderr
    assert not (elsewhere / "data").exists()
    for token in (done.stdout.strip(), again.stdout.strip()):  # the server takes them (no 20107)
        room = await connect(served.url, token, name="r")
        await room.disconnect()


# --- help, version, options from the environment ----------------------------------------------


def test_help_shows_defaults_and_variables_and_version_the_package() -> None:
    done = run_sfu("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for expected in ("(default: 8080)", "(default: 127.0.0.1)", "(default: INFO)", "[env SFU_PORT]", "[env SFU_ICE_SERVER]"):
        assert expected in text, done.stdout
    assert "(default: 3600)" in " ".join(run_sfu("token", "--help").stdout.split())
    version = run_sfu("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"sfu {importlib.metadata.version('twilio-compatible-sfu')}"


def parse(argv: list[str], environ: dict[str, str], extra: Callable[[cli.argparse.ArgumentParser], None] | None = None) -> cli.argparse.Namespace:
    p = cli.parser()
    if extra is not None:
        extra(cli._subparser(p, "serve"))
    args = p.parse_args(argv)
    cli.apply_env(p, argv, args, environ)
    return args


def test_every_serve_option_reads_its_variable_and_flags_win() -> None:
    env = {
        "SFU_HOST": "0.0.0.0", "SFU_PORT": "9443", "SFU_DATA_DIR": "/srv/sfu", "SFU_DEV_TOKENS": "false",
        "SFU_ICE_SERVER": "stun:a.example:3478, turn:u:p@b.example:3478", "SFU_RECONNECT_GRACE": "2.5",
        "SFU_MAX_PARTICIPANTS": "7", "SFU_LOG_LEVEL": "debug", "SFU_LOG_FORMAT": "json",
    }
    args = parse(["serve"], env)
    assert (args.host, args.port, args.data_dir, args.dev_tokens) == ("0.0.0.0", 9443, Path("/srv/sfu"), False)
    assert [s.urls for s in args.ice_server] == ["stun:a.example:3478", "turn:b.example:3478"]
    assert args.ice_server[1].username == "u"
    assert (args.reconnect_grace, args.max_participants, args.log_level, args.log_format) == (2.5, 7, "DEBUG", "json")
    # Explicit flags win, including repeatable ones and --no-/-- booleans.
    args = parse(["serve", "--port", "8081", "--ice-server", "stun:c.example:1", "--dev-tokens"], env)
    assert (args.port, [s.urls for s in args.ice_server], args.dev_tokens) == (8081, ["stun:c.example:1"], True)
    assert args.host == "0.0.0.0"
    # Nothing set: the defaults.
    args = parse(["serve"], {})
    assert (args.port, args.ice_server, args.dev_tokens, args.log_level) == (8080, [], None, "INFO")
    # An option another part of the program adds gets its variable with no extra code.
    def extra(serve: cli.argparse.ArgumentParser) -> None:
        serve.add_argument("--some-later-option", type=float, default=30.0)

    assert parse(["serve"], {"SFU_SOME_LATER_OPTION": "5"}, extra).some_later_option == 5.0
    assert parse(["serve", "--some-later-option", "9"], {"SFU_SOME_LATER_OPTION": "5"}, extra).some_later_option == 9.0
    # ... such as the drain and admission options.
    args = parse(["serve"], {"SFU_DRAIN_TIMEOUT": "5", "SFU_ALLOWED_ORIGINS": "https://a.example,https://b.example"})
    assert (args.drain_timeout, args.allowed_origins) == (5.0, ["https://a.example", "https://b.example"])
    # The credential variables keep their meaning: no option is called after them.
    names = {cli.env_name(a) for a in cli._env_actions(cli._subparser(cli.parser(), "serve"))}
    assert not names & set(ENV_VARS.values())


@pytest.mark.parametrize(("variable", "raw"), [("SFU_PORT", "70000"), ("SFU_DEV_TOKENS", "maybe"), ("SFU_LOG_LEVEL", "verbose"),
                                                ("SFU_ICE_SERVER", "http://x")])
def test_a_bad_variable_is_a_one_line_error_naming_it(tmp_path: Path, variable: str, raw: str) -> None:
    done = run_sfu("serve", "--data-dir", str(tmp_path / "data"), env=clean_env() | {variable: raw})
    assert done.returncode == 2
    assert_one_line_error(done, variable)


# --- sfu serve as a process: env, open-file limit, logs ---------------------------------------------


@dataclass
class Served:
    port: int
    data_dir: Path
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: "asyncio.Future[None] | None" = None  # collects stderr into ``lines``

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/signaling"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]

    def messages(self, logger: str) -> list[str]:
        return [str(r["message"]) for r in self.records() if r["logger"] == logger]


async def start_served(tmp_path: Path, args: list[str], env: dict[str, str], preexec_fn: Callable[[], None] | None = None,
                       port: int | None = None) -> Served:
    data_dir = tmp_path / "data"
    port = port or free_port()
    process = await asyncio.create_subprocess_exec(
        str(SFU), "serve", *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    served = Served(port, data_dir, process)

    async def read() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            served.lines.append(line.decode().rstrip("\n"))

    served.reader = asyncio.ensure_future(read())
    loop = asyncio.get_running_loop()
    end = loop.time() + START_DEADLINE
    async with aiohttp.ClientSession() as http:
        while True:
            assert process.returncode is None, "sfu serve exited:\n" + "\n".join(served.lines)
            try:
                async with http.get(f"{served.http}/healthz") as response:
                    if response.status == 200:
                        return served
            except aiohttp.ClientError:
                pass
            assert loop.time() < end, "sfu serve did not start listening:\n" + "\n".join(served.lines)
            await asyncio.sleep(0.1)


async def stop_served(served: Served) -> None:
    if served.process.returncode is None:
        served.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(served.process.wait(), DEADLINE)
    except asyncio.TimeoutError:
        served.process.kill()
        await served.process.wait()
    if served.reader is not None:
        await asyncio.wait_for(served.reader, DEADLINE)


@pytest.fixture
async def served_with_log(tmp_path: Path, netns: None) -> AsyncIterator[Served]:
    """`sfu serve` configured only by SFU_* variables, logging JSON lines at INFO."""
    port = free_port()
    env = clean_env() | {"SFU_PORT": str(port), "SFU_DATA_DIR": str(tmp_path / "data"), "SFU_LOG_FORMAT": "json",
                         "SFU_DEV_TOKENS": "false"}
    served = await start_served(tmp_path, [], env, port=port)
    try:
        yield served
    finally:
        await stop_served(served)


async def test_serve_runs_from_variables_alone(served_with_log: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served_with_log.http}/dev/token", json={"identity": "x", "room": "y"}) as response:
            assert response.status == 403  # SFU_DEV_TOKENS=false although it listens on loopback
    assert (served_with_log.data_dir / "credentials.json").exists()


async def test_serve_raises_the_soft_open_file_limit(tmp_path: Path, netns: None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-file limit is only {hard}")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    port = free_port()
    args = ["--port", str(port), "--data-dir", str(tmp_path / "data"), "--log-format", "json"]
    served = await start_served(tmp_path, args, clean_env(), preexec_fn=low_soft_limit, port=port)
    try:
        limits = Path(f"/proc/{served.process.pid}/limits").read_text()
    finally:
        await stop_served(served)
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    soft_now, hard_now = row.split()[3:5]
    assert soft_now == hard_now != "256", row
    assert any("raised the open-file limit" in m and "from 256" in m for m in served.messages("sfu")), served.lines


async def test_serve_logs_lifecycle_and_access_lines_as_json_without_secrets(served_with_log: Served) -> None:
    served = served_with_log
    done = run_sfu("token", "--identity", "alice", "--room", "standup", "--data-dir", str(served.data_dir))
    token = done.stdout.strip()
    credentials = load_or_create(served.data_dir, environ={})[0]
    auth = aiohttp.encode_basic_auth(credentials.api_key_sid, credentials.api_key_secret)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.http}/v1/Rooms?PageSize=5&Secret=sekrit-{token[-12:]}", headers={"Authorization": auth}) as response:
            status = response.status  # (400: Twilio refuses the unknown parameter; logged all the same)
    room = await connect(served.url, token, name="standup", tracks=media_tracks("v"))
    participant_sid, room_sid = room.local_participant.sid, room.sid
    bob_token = run_sfu("token", "--identity", "bob", "--room", "standup", "--data-dir", str(served.data_dir)).stdout.strip()
    bob = await connect(served.url, bob_token, name="standup")
    await subscribed_media(bob, "alice", "cam")  # media flows: the server's ICE checks are done
    await bob.disconnect()
    await room.disconnect()
    await wait_for(lambda: any(m.startswith("room ended") for m in served.messages("sfuserver.events")), DEADLINE, "room ended line")

    records = served.records()  # every line is one JSON object with the four fields
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    events = served.messages("sfuserver.events")
    assert any(m.startswith(f"room created: {room_sid} name='standup'") for m in events), events
    assert any(m.startswith(f"participant joined: {participant_sid} identity='alice' room={room_sid}") for m in events), events
    assert any(m.startswith(f"participant left: {participant_sid} identity='alice' room={room_sid}") for m in events), events
    assert any(m.startswith(f"room ended: {room_sid} name='standup'") for m in events), events
    access = served.messages("sfuserver.access")
    assert any(f" GET /v1/Rooms {status} " in m for m in access), access
    assert any(" GET /healthz 200 " in m for m in access), access
    text = "\n".join(served.lines)
    for secret in (token, token[-12:], auth.split()[1], credentials.api_key_secret, credentials.auth_token, "sekrit", "PageSize"):
        assert secret not in text
    # aioice's per-candidate chatter stays out at INFO.
    assert not [r for r in records if str(r["logger"]).startswith("aioice") and r["level"] == "INFO"]
