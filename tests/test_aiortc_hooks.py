"""The aiortc internals the SFU relies on are where the hooks expect them."""

from __future__ import annotations

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu.media import aiortc_hooks as hooks


def test_hooks_match_the_installed_aiortc() -> None:
    hooks.check_compatibility()


def test_a_moved_hook_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _recv_next(self) -> None:  # an "upgrade" that no longer hands RTP to _handle_rtp_data
        return None

    monkeypatch.setattr(RTCDtlsTransport, "_recv_next", _recv_next)
    monkeypatch.setattr(hooks, "_compatible_with", None)  # a new process would inspect afresh
    with pytest.raises(hooks.HookError, match="_handle_rtp_data"):
        hooks.check_compatibility()


def test_a_different_aiortc_version_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiortc

    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with pytest.raises(hooks.HookError, match="1.17.0"):
        hooks.check_compatibility()


def test_a_changed_turn_send_path_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """rtp_writer sends on relayed pairs the way aioice does (TurnTransport.sendto through the
    TURN channel): an aioice whose TurnTransport sends otherwise must be refused at startup."""
    import aioice.turn

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:  # an "upgrade" that sends another way
        return None

    monkeypatch.setattr(aioice.turn.TurnTransport, "sendto", sendto)
    monkeypatch.setattr(hooks, "_compatible_with", None)
    with pytest.raises(hooks.HookError, match="TurnTransport.sendto"):
        hooks.check_compatibility()


def test_a_moved_transceiver_receiver_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """renew_receiver / renew_sender (the client's reused m-sections) swap RTCRtpTransceiver's
    private receiver and sender slots: an aiortc that keeps them elsewhere must be refused."""
    from aiortc import RTCRtpTransceiver

    def __init__(self, kind, receiver, sender, direction="sendrecv") -> None:  # type: ignore[no-untyped-def]
        self._receiver_slot = receiver

    monkeypatch.setattr(RTCRtpTransceiver, "__init__", __init__)
    monkeypatch.setattr(hooks, "_compatible_with", None)
    with pytest.raises(hooks.HookError, match="__receiver"):
        hooks.check_compatibility()


async def test_the_data_section_comes_first_in_every_offer() -> None:
    """The first m-section carries the BUNDLE tag: it must be one no browser rejects for a codec
    (Firefox without H264 otherwise never starts ICE), so the data section goes first."""
    from aiortc import RTCConfiguration
    from aiortc.rtcconfiguration import RTCBundlePolicy

    pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        hooks.create_sctp_transport_first(pc)
        video = pc.addTransceiver("video", direction="sendonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        offer = hooks.data_section_first(pc, await pc.createOffer())
        await pc.setLocalDescription(offer)
        lines = pc.localDescription.sdp.splitlines()
        kinds = [line.split()[0] for line in lines if line.startswith("m=")]
        assert kinds == ["m=application", "m=video", "m=audio"]
        bundle = next(line for line in lines if line.startswith("a=group:BUNDLE"))
        assert bundle.split()[1] == pc.sctp.mid  # type: ignore[union-attr]
        assert (video.mid, audio.mid) == ("0", "1")  # mids kept, m-line order changed
        # A later offer keeps the order and appends new sections after the old ones.
        pc.addTransceiver("video", direction="sendonly")
        await pc.setRemoteDescription(await _answer_for(pc.localDescription))
        second = hooks.data_section_first(pc, await pc.createOffer())
        assert [line.split()[0] for line in second.sdp.splitlines() if line.startswith("m=")] == ["m=application", "m=video", "m=audio", "m=video"]
    finally:
        await pc.close()


async def _answer_for(offer: RTCSessionDescription) -> RTCSessionDescription:
    answerer = RTCPeerConnection()
    try:
        await answerer.setRemoteDescription(offer)
        await answerer.setLocalDescription(await answerer.createAnswer())
        return answerer.localDescription
    finally:
        await answerer.close()


def test_a_changed_ice_gathering_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """use_udp_mux replaces how aioice makes host candidates: an aioice that gathers another
    way would bind sockets of its own beside the mux, so it must be refused at startup."""
    import aioice.ice

    async def gather_candidates(self) -> None:  # an "upgrade" that no longer asks per component
        return None

    monkeypatch.setattr(aioice.ice.Connection, "gather_candidates", gather_candidates)
    monkeypatch.setattr(hooks, "_compatible_with", None)
    with pytest.raises(hooks.HookError, match="use_udp_mux"):
        hooks.check_compatibility()


async def test_a_connection_on_the_udp_mux_gathers_no_socket_and_unregisters_on_close(netns: None) -> None:
    """A muxed peer connection's host candidates carry the mux's port, it connects (data
    channel both ways) through the mux's one socket, and closing it leaves nothing on the mux."""
    from aiortc import RTCConfiguration
    from aiortc.rtcconfiguration import RTCBundlePolicy

    from sfu.media.udpmux import UdpMux

    from .conftest import wait_for

    mux = UdpMux.bind(0)
    muxed = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    other = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        hooks.use_udp_mux(muxed, mux)
        assert mux.connections == 1
        channel = muxed.createDataChannel("chat")
        await muxed.setLocalDescription(await muxed.createOffer())
        candidates = [line.split() for line in muxed.localDescription.sdp.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all((c[5], c[7]) == (str(mux.port), "host") for c in candidates), candidates
        connection = muxed.sctp.transport.transport._connection  # type: ignore[union-attr]
        assert all(p.transport.get_extra_info("socket") is None for p in connection._protocols)

        got: list[str] = []
        other.on("datachannel", lambda remote: remote.on("message", lambda m: remote.send(f"echo {m}")))
        channel.on("message", got.append)
        await other.setRemoteDescription(muxed.localDescription)
        await other.setLocalDescription(await other.createAnswer())
        await muxed.setRemoteDescription(other.localDescription)
        await wait_for(lambda: channel.readyState == "open", message="the data channel opened")
        channel.send("hi")
        await wait_for(lambda: got == ["echo hi"], message="the echo")
        pair = connection._nominated[1]
        assert mux.owner(pair.remote_addr) == connection.local_username  # learned from its checks
        assert mux.stats.received > 0 and mux.stats.unknown_source == 0
    finally:
        await other.close()
        await muxed.close()
        remaining = mux.connections
        mux.close()
    assert remaining == 0
