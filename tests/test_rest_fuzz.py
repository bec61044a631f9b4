"""Property-based fuzz of the REST API from Twilio's own spec (schemathesis): valid and invalid
requests to every operation we serve; no 5xx, and every answer matches the spec (documented
statuses against their schema, errors as Twilio's error body)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from sfu.credentials import generate

from .conftest import in_test_namespace
from .rest_support import SPEC_PATH, SfuProcess, spec

OPERATIONS = [
    "CreateRoom", "ListRoom", "FetchRoom", "UpdateRoom",
    "ListRoomParticipant", "FetchRoomParticipant", "UpdateRoomParticipant",
    "ListRoomParticipantPublishedTrack", "FetchRoomParticipantPublishedTrack",
    "ListRoomParticipantSubscribedTrack", "FetchRoomParticipantSubscribedTrack",
    "FetchRoomParticipantSubscribeRule", "UpdateRoomParticipantSubscribeRule",
    "FetchRoomRecordingRule", "UpdateRoomRecordingRule",
]  # fmt: skip
known_room = {"sid": "RM" + "0" * 32}  # a real room (its SID) the fuzz addresses besides random ones
succeeded: set[str] = set()  # operations that answered 2xx at least once

schema = schemathesis.openapi.from_path(SPEC_PATH)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.hook
def map_path_parameters(context: Any, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """About half the cases address the known room, so operations get past the 404."""
    if not params:
        return params
    key = "RoomSid" if "RoomSid" in params else "Sid"
    return {**params, key: known_room["sid"]} if len(str(params[key])) % 2 == 0 else params


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SfuProcess, requests.Session]]:
    if not in_test_namespace():
        pytest.fail("run inside tests/netns.sh")
    server = SfuProcess(tmp_path_factory.mktemp("fuzz"), generate()).start()
    session = requests.Session()
    session.trust_env = False
    session.auth = (server.credentials.account_sid, server.credentials.auth_token)
    created = session.post(f"{server.http}/v1/Rooms", data={"UniqueName": "fuzz", "UnusedRoomTimeout": "60"})
    known_room["sid"] = created.json()["sid"]
    yield server, session
    server.stop()
    assert len(succeeded) >= 5, f"the fuzz reached too few operations: {sorted(succeeded)}"
    log = server.log.read_text()
    assert "Traceback" not in log, log[-4000:]


@schema.include(operation_id=OPERATIONS).parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_never_5xx_and_always_matches_the_spec(case: schemathesis.Case, fuzz_server: tuple[SfuProcess, requests.Session]) -> None:
    server, session = fuzz_server
    response = case.call(base_url=server.http, session=session, timeout=30)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    url, status, body = response.request.url, response.status_code, response.text
    path = "/" + url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
    if spec().operation(case.method, path) is None:  # negative mode also tries other methods
        error = json.loads(body)
        assert status == 405 and error["code"] == 20004 and set(error) == {"code", "message", "more_info", "status"}
    else:
        spec().check(case.method, url, status, body)
    if status < 300:
        succeeded.add(case.operation.label)
