"""The JS client module (web-client/sdk.js) through its public, twilio-video-shaped API, in real
Chromium against the real server, with a Python client on the other side."""

from __future__ import annotations

import pytest

from signaling.client import LocalDataTrack, RemoteDataTrack

from .conftest import wait_for
from .helpers.browser import Page, chromium, harness_site
from .helpers.clients import EventLog, about, local_track, subscribed_data, subscribed_media

pytestmark = pytest.mark.browser  # real Chromium: deselect with -m 'not browser'


async def test_connect_events_media_data_and_mute(server, clients):
    py = await clients.join("py", "sdk", publish="vad", receive="packets")
    log = EventLog(py)
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            token = server.token("web")
            shape = await page.js(
                """async (token) => {
                    const room = await Video.connect(token, {name: 'sdk', audio: true, video: true});
                    window.room = room;
                    record(room, 'room');
                    const py = [...room.participants.values()][0];
                    record(py, 'py');
                    record(room.localParticipant, 'lp');
                    return {sid: room.sid, name: room.name, state: room.state, identity: room.localParticipant.identity,
                            isMap: room.participants instanceof Map, keys: [...room.participants.keys()],
                            others: [...room.participants.values()].map(p => p.identity),
                            local: [...room.localParticipant._local.values()].map(t => t.kind).sort()};
                }""",
                token,
            )
            assert shape["sid"].startswith("RM") and shape["sid"] == py.sid
            assert shape["name"] == "sdk" and shape["state"] == "connected" and shape["identity"] == "web"
            assert shape["isMap"] and shape["others"] == ["py"] and shape["keys"][0].startswith("PA")
            assert shape["local"] == ["audio", "video"]  # audio / video true: camera and microphone

            # Subscribed to py's three tracks: room and participant events, in twilio-video's shape.
            for name in ("cam", "mic", "chat"):
                await page.wait_event("trackSubscribed", on="room", arg1={"trackName": name}, arg2={"identity": "py"})
                await page.wait_event("trackSubscribed", on="py", arg1={"trackName": name, "isSubscribed": True})
            kinds = await page.js("() => [...[...room.participants.values()][0].tracks.values()].map(p => [p.trackName, p.kind, p.isSubscribed])")
            assert sorted(kinds) == [["cam", "video", True], ["chat", "data", True], ["mic", "audio", True]]

            # attach() returns a playing <video>; detach() returns it, emptied.
            attached = await page.js(
                """() => {
                    const pub = [...room.participants.values()][0].videoTracks.values().next().value;
                    const el = pub.track.attach();
                    document.body.append(el);
                    window.el = el;
                    return {tag: el.tagName, autoplay: el.autoplay, kind: pub.track.kind, name: pub.track.name};
                }"""
            )
            assert attached == {"tag": "VIDEO", "autoplay": True, "kind": "video", "name": "cam"}
            width = await page.wait("() => window.el.videoWidth", message="py's video in an attached element")
            assert width == 320  # tests/media.py's counter video
            detached = await page.js(
                """() => {
                    const track = [...room.participants.values()][0].videoTracks.values().next().value.track;
                    const els = track.detach();
                    return {count: els.length, same: els[0] === window.el, emptied: window.el.srcObject === null};
                }"""
            )
            assert detached == {"count": 1, "same": True, "emptied": True}
            audio_tag = await page.js("() => [...room.participants.values()][0].audioTracks.values().next().value.track.attach().tagName")
            assert audio_tag == "AUDIO"

            # The Python client receives the browser's camera and microphone.
            for kind in ("video", "audio"):
                name = await page.js("(kind) => [...room.localParticipant._local.values()].find(t => t.kind === kind).name", kind)
                track = await subscribed_media(py, "web", name)
                start = track.packets_received
                await wait_for(lambda: track.packets_received > start + 10, message=f"py receiving web's {kind}")

            # Data: publishTrack(LocalDataTrack) resolves with a publication; messages both ways.
            publication = await page.js(
                """async () => {
                    window.chat = new Video.LocalDataTrack({name: 'chat'});
                    const pub = await room.localParticipant.publishTrack(window.chat);
                    return {trackSid: pub.trackSid, trackName: pub.trackName, kind: pub.kind, same: pub.track === window.chat,
                            listed: room.localParticipant.dataTracks.has(pub.trackSid)};
                }"""
            )
            assert publication["trackSid"].startswith("MT") and publication["same"] and publication["listed"]
            assert (publication["trackName"], publication["kind"]) == ("chat", "data")
            web_chat = await subscribed_data(py, "web", "chat")
            assert isinstance(web_chat, RemoteDataTrack)
            got: list[str] = []
            web_chat.on("message", got.append)
            await page.js("() => { for (let i = 0; i < 20; i++) window.chat.send('m' + i); }")
            await wait_for(lambda: len(got) == 20, message="20 messages at py")
            assert got == [f"m{i}" for i in range(20)]
            await page.js(
                """() => {
                    const track = [...room.participants.values()][0].dataTracks.values().next().value.track;
                    record(track, 'py-chat');
                }"""
            )
            local_track(py, "chat").send("pong")
            await page.wait_event("message", on="py-chat", arg0="pong")
            await page.wait_event("trackMessage", on="room", arg0="pong", arg1={"name": "chat"}, arg2={"identity": "py"})
            await page.wait_event("trackMessage", on="py", arg0="pong")

            # Mute both ways: LocalTrack.disable() / enable(), trackDisabled / trackEnabled.
            mark = log.mark()
            await page.js("() => [...room.localParticipant._local.values()].find(t => t.kind === 'audio').disable()")
            await log.wait("track_disabled", about("web"), since=mark)
            local_track(py, "mic").disable()
            await page.wait_event("trackDisabled", on="room", arg0={"name": "mic", "isEnabled": False}, arg1={"identity": "py"})
            await page.wait_event("trackDisabled", on="py", arg1={"trackName": "mic", "isTrackEnabled": False})
            local_track(py, "mic").enable()
            await page.wait_event("trackEnabled", on="py", arg1={"trackName": "mic", "isTrackEnabled": True})

            # A track published later: trackPublished, then trackSubscribed.
            await py.local_participant.publish_track(LocalDataTrack("news"))
            await page.wait_event("trackPublished", on="room", arg0={"trackName": "news", "kind": "data"}, arg1={"identity": "py"})
            await page.wait_event("trackPublished", on="py", arg0={"trackName": "news"})
            await page.wait_event("trackSubscribed", on="py", arg0={"name": "news", "kind": "data"}, arg1={"trackName": "news"})

            # A refused publication rejects with the server's code and message.
            refused = await page.js("() => errorOf(room.localParticipant.publishTrack(new Video.LocalDataTrack({name: 'chat'})))")
            assert refused["code"] == 53304 and "duplicated" in refused["message"] and refused["isTwilioError"], refused
            await page.wait_event("trackPublicationFailed", on="lp", arg0={"code": 53304}, arg1={"name": "chat", "kind": "data"})

            # unpublishTrack: the others see trackUnpublished; the room goes on working.
            mark = log.mark()
            unpublished = await page.js(
                """() => {
                    const camera = [...room.localParticipant._local.values()].find(t => t.kind === 'video');
                    const pub = room.localParticipant.unpublishTrack(camera);
                    return {trackSid: pub.trackSid, left: room.localParticipant.videoTracks.size};
                }"""
            )
            assert unpublished["trackSid"].startswith("MT") and unpublished["left"] == 0
            await log.wait("track_unpublished", about("web"), since=mark)
            await py.local_participant.unpublish_track(local_track(py, "mic"))
            await page.wait_event("trackUnsubscribed", on="room", arg1={"trackName": "mic"})
            await page.wait_event("trackUnpublished", on="py", arg0={"trackName": "mic"})

            # The other leaves: participantDisconnected; then we leave: disconnected, no error.
            await py.disconnect()
            await page.wait_event("participantDisconnected", on="room", arg0={"identity": "py"})
            assert await page.js("() => room.participants.size") == 0
            await page.js("() => room.disconnect()")
            event = await page.wait_event("disconnected", on="room")
            assert event["args"][1] is None
            assert await page.js("() => room.state") == "disconnected"
            errors = [e["args"][0]["code"] for e in await page.events("error") if e["on"] == "room"]
            assert errors == [53304], errors  # the refused publication only: no ICE or SDP trouble
            assert not page.errors, page.errors
        finally:
            await page.close()


async def test_connect_refusals_carry_the_server_code_and_message(server, clients):
    from sfu.room import RoomSettings

    server.registry.create_room("small", RoomSettings(max_participants=1, created_via_rest=True))
    await clients.join("first", "small", publish="")
    async with chromium() as browser, harness_site() as origin:
        # The harness is a page of another application (another origin) importing the module.
        page = await Page.harness(browser, origin, server.http, "app")
        try:
            refusals = await page.js(
                """async ([bad, elsewhere, good]) => ({
                    bad: await errorOf(Video.connect(bad, {name: 'x', tracks: []})),
                    grant: await errorOf(Video.connect(elsewhere, {name: 'x', tracks: []})),
                    full: await errorOf(Video.connect(good, {name: 'small', tracks: []})),
                    unreachable: await errorOf(Video.connect(good, {name: 'x', tracks: [], signalingUrl: 'ws://127.0.0.1:9/signaling'})),
                })""",
                ["not-a-token", server.token("web", room="elsewhere"), server.token("web")],
            )
            assert refusals["bad"] == {"code": 20101, "message": "Invalid Access Token", "isTwilioError": True}
            assert refusals["grant"]["code"] == 20106, refusals
            assert refusals["full"] == {"code": 53105, "message": "Room contains too many Participants", "isTwilioError": True}
            assert refusals["unreachable"]["code"] == 53000 and refusals["unreachable"]["isTwilioError"], refusals
            # ...and the same module joins from that origin with the default signaling URL.
            joined = await page.js(
                "async (token) => { const room = await Video.connect(token, {name: 'open', tracks: []}); const n = room.name; room.disconnect(); return n; }",
                server.token("web"),
            )
            assert joined == "open"
        finally:
            await page.close()


async def test_reconnects_after_the_websocket_drops(server, clients):
    py = await clients.join("py", "flaky", publish="d", receive="packets")
    log = EventLog(py)
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            await page.js(
                """async (token) => {
                    window.chat = new Video.LocalDataTrack({name: 'chat'});
                    window.room = record(await Video.connect(token, {name: 'flaky', tracks: [window.chat]}), 'room');
                }""",
                server.token("web"),
            )
            chat = await subscribed_data(py, "web", "chat")
            got: list[str] = []
            chat.on("message", got.append)
            mark = log.mark()
            await page.js("() => room._ws.close(4000)")  # the network drops the websocket
            await page.wait_event("reconnecting", on="room", arg0={"code": 53001})
            await page.wait_event("reconnected", on="room")
            assert await page.js("() => room.state") == "connected"
            await log.wait("participant_reconnecting", about("web"), since=mark)
            await log.wait("participant_reconnected", about("web"), since=mark)
            await page.js("() => window.chat.send('still here')")
            await wait_for(lambda: got == ["still here"], message="a message after the reconnect")
            assert not await page.events("disconnected")
        finally:
            await page.close()


async def test_disconnected_carries_the_error_when_the_server_ends_it(server, clients):
    async with chromium() as browser, harness_site() as origin:
        page = await Page.harness(browser, origin, server.http, "web")
        try:
            for room_name, end in (("ended", "room"), ("twice", "duplicate")):
                await page.js(
                    """async ([token, name]) => { window.log = []; window.room = record(await Video.connect(token, {name, tracks: []}), 'room'); }""",
                    [server.token("web"), room_name],
                )
                if end == "room":
                    room = server.registry.find_in_progress(room_name)
                    assert room is not None
                    await room.end()
                    expected = 53118
                else:
                    await clients.join("web", room_name, publish="")  # the same identity elsewhere
                    expected = 53205
                event = await page.wait_event("disconnected", on="room")
                assert event["args"][1]["code"] == expected and event["args"][1]["isTwilioError"], event
                assert await page.js("() => room.state") == "disconnected"
        finally:
            await page.close()
