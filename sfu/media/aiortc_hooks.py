"""The one module that touches aiortc's private internals (aiortc pinned to 1.16.0).

aiortc terminates ICE, DTLS and SRTP for us; everything after decryption is ours:

* ``attach_rtp_sink`` replaces the DTLS transport's ``_handle_rtp_data`` so that each
  decrypted RTP packet reaches the SFU as raw bytes: no ``RtpPacket`` parse, no jitter
  buffer, no decoder thread.
* ``hook_receiver`` replaces ``RTCRtpReceiver.receive`` so the receiver registers its
  SSRCs for RTCP routing but never starts the decoder thread, and routes its RTCP
  (sender reports) to the SFU.
* ``hook_sender`` replaces ``RTCRtpSender.send`` so no encoder loop ever polls a track,
  and routes subscriber RTCP (NACK, PLI, FIR, REMB, receiver reports) to the SFU.
* ``rtp_writer`` returns a synchronous function that SRTP-protects a packet with the
  subscriber's keys and writes it to the selected ICE pair's socket.
* ``use_udp_mux`` makes a peer connection's host candidates live on the server's one UDP
  socket (``udpmux.UdpMux``) instead of a socket of their own.
* ``renew_sender_ssrcs`` gives a reused m-section's sender new SSRCs (server), and
  ``renew_receiver`` / ``renew_sender`` give a reused m-section a fresh receiver / sender
  (Python client): aiortc has no public way to start a second stream on an m-section
  (see their docstrings).

``check_compatibility`` fails loudly if an aiortc upgrade moves any of these hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import aioice.candidate
import aioice.ice
import aioice.turn
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import RTCRtpReceiveParameters, RTCRtpSendParameters
from aiortc.rtp import AnyRtcpPacket, RtpPacket
from aiortc.utils import random32

from . import udpio
from .udpmux import Address, Registration, UdpMux

logger = logging.getLogger(__name__)

AIORTC_VERSION = "1.16.0"
_CONNECTED = State.CONNECTED  # (an Enum member read through its class costs ~0.15 µs: once per packet copy)

RtcpHandler = Callable[[AnyRtcpPacket], None]


class HookError(RuntimeError):
    """aiortc no longer looks the way this module expects."""


_compatible_with: str | None = None


def check_compatibility() -> None:
    """Raise HookError when aiortc's internals are not where the hooks expect them.

    The source inspection runs once per process and aiortc version (it parses source).
    """
    global _compatible_with
    import aiortc

    if _compatible_with == aiortc.__version__ and _compatible_with == AIORTC_VERSION:
        return
    _inspect_aiortc()
    _compatible_with = aiortc.__version__


def _inspect_aiortc() -> None:
    import aiortc

    if aiortc.__version__ != AIORTC_VERSION:
        raise HookError(f"aiortc {aiortc.__version__} found, hooks written for {AIORTC_VERSION}")
    expectations: list[tuple[Any, str]] = [
        (RTCDtlsTransport, "_handle_rtp_data"),
        (RTCDtlsTransport, "_handle_rtcp_data"),
        (RTCDtlsTransport, "_register_rtp_receiver"),
        (RTCDtlsTransport, "_unregister_rtp_receiver"),
        (RTCDtlsTransport, "_register_rtp_sender"),
        (RTCDtlsTransport, "_unregister_rtp_sender"),
        (RTCDtlsTransport, "_send_rtp"),
        (RTCRtpReceiver, "_handle_rtcp_packet"),
        (RTCRtpReceiver, "receive"),
        (RTCRtpSender, "_handle_rtcp_packet"),
        (RTCRtpSender, "send"),
        (RTCRtpTransceiver, "_codecs"),
        (aioice.ice.Connection, "_nominated"),
        (aioice.ice.Connection, "_protocols"),
        (aioice.ice.StunProtocol, "datagram_received"),
        (RTCDtlsTransport, "_rx_srtp"),
    ]
    for owner, name in expectations:
        present = hasattr(owner, name) or name in getattr(owner, "__annotations__", {})
        if not present and name not in inspect.getsource(owner):
            raise HookError(f"{owner.__name__}.{name} is gone")
    src = inspect.getsource(RTCDtlsTransport._recv_next)
    if "_handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" not in src:
        raise HookError("RTCDtlsTransport._recv_next no longer hands decrypted RTP to _handle_rtp_data")
    if "self._tx_srtp.protect(data)" not in inspect.getsource(RTCDtlsTransport._send_rtp):
        raise HookError("RTCDtlsTransport._send_rtp no longer protects with _tx_srtp")
    if "self._rtp_router.register_sender(sender, ssrc=sender._ssrc)" not in inspect.getsource(
        RTCDtlsTransport._register_rtp_sender
    ):
        raise HookError("RTCDtlsTransport._register_rtp_sender changed")
    offer_source = inspect.getsource(RTCPeerConnection.createOffer)
    if "self.__sctp_mline_index = next_mline_index()" not in offer_source or "transceiver._set_mline_index(i)" not in offer_source:
        raise HookError("RTCPeerConnection.createOffer no longer places sections by m-line index (data_section_first)")
    if "self.__getTransceiverByMLineIndex(i)" not in inspect.getsource(RTCPeerConnection.setLocalDescription):
        raise HookError("RTCPeerConnection.setLocalDescription no longer maps sections by m-line index (data_section_first)")
    if "self.__receiver = receiver" not in inspect.getsource(RTCRtpTransceiver.__init__):
        raise HookError("RTCRtpTransceiver no longer keeps its receiver in __receiver")
    if "return self.__receiver" not in inspect.getsource(RTCRtpTransceiver):
        raise HookError("RTCRtpTransceiver.receiver no longer reads __receiver")
    if "self.__sender = sender" not in inspect.getsource(RTCRtpTransceiver.__init__) or "return self.__sender" not in inspect.getsource(RTCRtpTransceiver):
        raise HookError("RTCRtpTransceiver no longer keeps its sender in __sender")
    if "self._stream_id = " not in inspect.getsource(RTCRtpSender.__init__):
        raise HookError("RTCRtpSender no longer sets _stream_id in __init__")
    for owner, attribute in ((RTCRtpSender, "self._ssrc = "), (RTCRtpSender, "self._rtx_ssrc = "), (RTCRtpReceiver, "self._track: ")):
        if attribute not in inspect.getsource(owner.__init__):
            raise HookError(f"{owner.__name__} no longer sets {attribute.split()[0]} in __init__")
    if not hasattr(RTCRtpReceiver, "_set_rtcp_ssrc"):
        raise HookError("RTCRtpReceiver._set_rtcp_ssrc is gone")
    if "and not transceiver.receiver.track" not in inspect.getsource(RTCPeerConnection.setRemoteDescription):
        raise HookError("RTCPeerConnection.setRemoteDescription no longer creates a track for a receiver without one")
    if not hasattr(RTCPeerConnection, "_RTCPeerConnection__connect"):
        raise HookError("RTCPeerConnection.__connect is gone")
    if not hasattr(RTCPeerConnection, "_RTCPeerConnection__createSctpTransport"):
        raise HookError("RTCPeerConnection.__createSctpTransport is gone")
    if "await transceiver.sender.send(" not in inspect.getsource(RTCPeerConnection):
        raise HookError("RTCPeerConnection no longer starts senders with send()")
    if "t.mid in [None, media.rtp.muxId]" not in inspect.getsource(RTCPeerConnection.setRemoteDescription) or (
        "self.__transceivers: list[RTCRtpTransceiver] = []" not in inspect.getsource(RTCPeerConnection.__init__)
    ):
        raise HookError("RTCPeerConnection no longer matches an offer's sections to __transceivers by mid (unnegotiated_transceivers_hidden)")
    _inspect_ice_send()
    _inspect_ice_gathering()


def guard_rtcp(dtls: RTCDtlsTransport) -> None:
    """Keep a malformed RTCP packet from ending ``dtls``'s receive loop.

    aiortc's RTCP routing lets some parse errors escape (a truncated REMB raises
    ``struct.error`` inside ``route_rtcp``), and its receive loop ends on any exception.
    """
    original = dtls._handle_rtcp_data

    async def handle_rtcp_data(data: bytes) -> None:
        try:
            await original(data)
        except Exception as exc:
            logger.debug("dropping an RTCP packet aiortc could not handle: %r", exc)

    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


def create_sctp_transport_first(pc: RTCPeerConnection) -> None:
    """Give ``pc`` its SCTP transport before any transceiver exists, as the bundle's.

    Every transceiver then bundles onto the SCTP transport's DTLS transport, and aiortc
    offers the SCTP m-section (after the media ones) in every offer. Marked bundled, it is
    not "replaced" by the answer's BUNDLE group: aiortc would stop the shared transport.
    """
    if pc.sctp is None:
        pc._RTCPeerConnection__createSctpTransport()  # type: ignore[attr-defined]
        sctp: Any = pc.sctp
        sctp._bundled = True
        guard_rtcp(sctp.transport)


def data_section_first(pc: RTCPeerConnection, offer: RTCSessionDescription) -> RTCSessionDescription:
    """Put the data (SCTP) m-section first in ``pc``'s first offer, and so in every later one.

    aiortc offers the media sections first, and the first section is the one BUNDLE is tagged
    on (RFC 8843): the whole bundle's transport hangs on it. A subscriber joining a room whose
    video is in a codec its browser lacks (Firefox without H264) rejects that section, and
    Firefox then never starts ICE at all. The data section is in every offer and is never
    rejected for a codec. Later offers keep the order (aiortc lays out the sections it already
    negotiated in their old order). The transceivers' m-line indexes move with their sections.
    """
    sctp = pc.sctp
    index = pc._RTCPeerConnection__sctp_mline_index  # type: ignore[attr-defined]
    if sctp is None or sctp.mid is not None or not index:
        return offer  # already placed by an earlier offer, or first already
    lines = offer.sdp.split("\r\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if index >= len(starts) or not lines[starts[index]].startswith("m=application"):
        return offer
    bounds = [*starts, len(lines) - 1 if lines[-1] == "" else len(lines)]
    sections = [lines[bounds[i]:bounds[i + 1]] for i in range(len(starts))]
    sections.insert(0, sections.pop(index))
    session = lines[: starts[0]]
    mids = [next(line[6:] for line in section if line.startswith("a=mid:")) for section in sections]
    session = ["a=group:BUNDLE " + " ".join(mids) if line.startswith("a=group:BUNDLE ") else line for line in session]
    for transceiver in pc.getTransceivers():
        position = transceiver._get_mline_index()
        if position is not None and position < index:
            transceiver._set_mline_index(position + 1)
    pc._RTCPeerConnection__sctp_mline_index = 0  # type: ignore[attr-defined]
    tail = lines[bounds[-1]:]
    return RTCSessionDescription(sdp="\r\n".join([*session, *(line for s in sections for line in s), *tail]), type="offer")


@contextlib.contextmanager
def unnegotiated_transceivers_hidden(pc: RTCPeerConnection) -> Iterator[Callable[[], None]]:
    """Keep ``pc``'s transceivers that no description carries yet out of sight while a remote
    offer is applied and answered (the participant offers: the official twilio-video SDK).

    aiortc binds each m-section of a remote offer to the first transceiver of its kind whose
    mid is the section's *or None*: a subscription added since our last offer would take
    over the participant's new m-section (its camera would land on our sending section).
    And the answer would trip over their missing offer direction. Hidden, they stay for our
    next offer, which gives them mids of their own. Yields a function that hides those added
    meanwhile (call it after each await: the room may subscribe at any time).
    """
    transceivers: list[RTCRtpTransceiver] = pc._RTCPeerConnection__transceivers  # type: ignore[attr-defined]
    hidden: list[RTCRtpTransceiver] = []

    def hide() -> None:
        hidden.extend(t for t in transceivers if t.mid is None)
        transceivers[:] = [t for t in transceivers if t.mid is not None]

    hide()
    try:
        yield hide
    finally:
        transceivers.extend(t for t in hidden if t not in transceivers)


def start_when_connected(pc: RTCPeerConnection) -> None:
    """Work around an aiortc race: transceivers negotiated while DTLS is handshaking never start.

    aiortc starts senders and receivers in ``__connect``, run after each description is
    applied, and only for transports whose DTLS state is already ``connected``. When a
    second negotiation completes during the first handshake, its ``__connect`` skips the
    new transceivers and the first one, still awaiting the handshake, does not revisit
    them: their media is silently dropped. Running ``__connect`` again once the connection
    is up starts them (``send``, ``receive`` and SCTP ``start`` are idempotent).
    """

    def on_state_change() -> None:
        if pc.connectionState == "connected":
            asyncio.ensure_future(pc._RTCPeerConnection__connect())  # type: ignore[attr-defined]

    pc.on("connectionstatechange", on_state_change)


def attach_rtp_sink(dtls: RTCDtlsTransport, sink: Callable[[bytes], None]) -> None:
    """Hand every decrypted RTP packet on ``dtls`` to ``sink`` as raw bytes.

    Fast path: the socket protocols of the ICE connection demultiplex by first byte
    (RFC 7983) before aioice tries to parse STUN, and SRTP packets are unprotected and
    handed over synchronously in ``datagram_received``: no asyncio.Queue, no task wake-up,
    no coroutine per packet. RTCP, DTLS and STUN keep aiortc's own path; so does anything
    arriving another way (TURN), through the ``_handle_rtp_data`` replacement.
    """

    def deliver(data: bytes) -> None:
        try:
            sink(data)
        except Exception:  # a bad packet must never stop the transport's receive path
            logger.exception("RTP sink failed on a %d-byte packet", len(data))

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        deliver(data)

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]

    def fast(original: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        def datagram_received(data: bytes, addr: Any) -> None:
            if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
                srtp = dtls._rx_srtp
                if srtp is not None and dtls._state is _CONNECTED:
                    try:
                        plain = srtp.unprotect(data)
                    except pylibsrtp.Error:
                        return
                    deliver(plain)
                    return
            original(data, addr)

        return datagram_received

    for protocol in dtls.transport._connection._protocols:
        if type(protocol) in (aioice.ice.StunProtocol, _MuxProtocol):
            protocol.datagram_received = fast(protocol.datagram_received)  # type: ignore[method-assign,assignment]


class _MuxProtocol(aioice.ice.StunProtocol):
    """A host candidate on the UDP mux: aioice's protocol, whose transport is the mux."""

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if isinstance(data, bytes) and data[0] > 3:  # DTLS or SRTP (the mux routes nothing else but STUN): skip the STUN parse
            self.receiver.data_received(data, self.local_candidate.component)
            return
        super().datagram_received(data, addr)


class _MuxTransport(asyncio.DatagramTransport):
    """What a ``_MuxProtocol`` takes for its socket: sends go through its connection's
    registration on the mux; closing it detaches the protocol from the connection's endpoint."""

    def __init__(self, registration: Registration, protocol: _MuxProtocol, detach: Callable[[_MuxProtocol], None]) -> None:
        super().__init__()
        self._registration = registration
        self._protocol = protocol
        self._detach = detach
        self._closing = False
        self.send_media = registration.mux.sendto  # rtp_writer: SRTP is never a STUN request
        self.send_rtp = registration.mux.send_rtp  # rtp_writer: plain RTP, protected on the way out

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing:
            self._registration.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._registration.mux.sockname if name == "sockname" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._detach(self._protocol)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class _MuxEndpoint:
    """A connection's endpoint on the mux: hands each datagram to one of its host protocols
    (a STUN response to the one that sent the request; they all share the one socket)."""

    __slots__ = ("protocols",)

    def __init__(self) -> None:
        self.protocols: list[_MuxProtocol] = []

    def datagram_received(self, data: bytes, addr: Address) -> None:
        protocols = self.protocols
        if not protocols:
            return  # not gathered yet, or closed
        protocol = protocols[0]
        if len(protocols) > 1 and data[0] < 4:
            transaction = data[8:20]
            protocol = next((p for p in protocols if transaction in p.transactions), protocol)
        protocol.datagram_received(data, addr)


def use_udp_mux(pc: RTCPeerConnection, mux: UdpMux, announced_address: str | None = None) -> None:
    """Gather ``pc``'s host candidates on ``mux`` instead of sockets of their own.

    Call it right after creating ``pc`` (max-bundle: its SCTP transport's ICE connection is
    the only one). The connection gets a ufrag unique on the mux and is registered under it
    with its password. Host candidates carry ``announced_address`` if given, else the mux's
    own address if it is bound to one, else each host address aioice gathers of the mux's
    family, all with the mux's port. Server-reflexive
    candidates are asked for through the mux; relayed (TURN) ones are gathered by aioice
    as before, on sockets of their own. Closing the ICE connection unregisters it.
    """
    create_sctp_transport_first(pc)
    connection = pc.sctp.transport.transport._connection  # type: ignore[union-attr]
    connection._local_username = mux.new_ufrag()
    endpoint = _MuxEndpoint()
    registration = mux.register(connection.local_username, connection.local_password, endpoint)
    gather_others = connection.get_component_candidates
    close_connection = connection.close

    def detach(protocol: _MuxProtocol) -> None:
        if protocol in endpoint.protocols:
            endpoint.protocols.remove(protocol)

    bound = None if ipaddress.ip_address(mux.sockname[0]).is_unspecified else mux.sockname[0]  # --udp-host

    async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5) -> list[Any]:
        # aioice passes no address under the relay policy: then no host candidate either.
        own = announced_address or bound
        hosts = [own] if own and addresses else addresses
        protocols: list[_MuxProtocol] = []
        for host in hosts:
            if _address_family(host) != mux.family:
                continue
            protocol = _MuxProtocol(connection)
            protocol.connection_made(_MuxTransport(registration, protocol, detach))
            protocol.local_candidate = aioice.candidate.Candidate(
                foundation=aioice.candidate.candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=aioice.candidate.candidate_priority(component, "host"),
                host=host,
                port=mux.port,
                type="host",
            )
            protocols.append(protocol)
        if hosts and not protocols:
            logger.warning("no host address of the UDP mux's address family among %s: no host candidate", hosts)
        endpoint.protocols += protocols
        connection._protocols += protocols
        reflexive, relayed = await asyncio.gather(
            _reflexive_candidates(protocols, connection.stun_server, timeout),
            gather_others(component, [], timeout),  # no host address: aioice gathers only TURN
        )
        return [p.local_candidate for p in protocols] + reflexive + relayed

    async def close() -> None:
        try:
            await close_connection()
        finally:
            registration.close()

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    connection.close = close  # type: ignore[method-assign]


def _address_family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


async def _reflexive_candidates(protocols: list[_MuxProtocol], stun_server: tuple[str, int] | None, timeout: float) -> list[Any]:
    """What aioice asks a STUN server for on each IPv4 host socket, asked through the mux."""
    if stun_server is None:
        return []
    tasks = [
        asyncio.ensure_future(aioice.ice.server_reflexive_candidate(p, stun_server))
        for p in protocols
        if ipaddress.ip_address(p.local_candidate.host).version == 4
    ]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    return [task.result()[0] for task in done if task.exception() is None]


def _inspect_ice_gathering() -> None:
    """``use_udp_mux`` replaces how aioice gathers host candidates and closes a connection."""
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    Connection, StunProtocol = aioice.ice.Connection, aioice.ice.StunProtocol
    checks: list[tuple[Any, str]] = [
        (RTCIceGatherer.__init__, "self._connection = Connection("),
        (RTCIceTransport.__init__, "self._connection = gatherer._connection"),
        (Connection.__init__, "self._local_username = local_username"),
        (Connection, "return self._local_username"),
        (Connection.gather_candidates, "self.get_component_candidates(component=component, addresses=addresses)"),
        (Connection.get_component_candidates, "for address in addresses:"),
        (Connection.get_component_candidates, "if self.turn_server:"),
        (Connection.close, "await protocol.close()"),
        (StunProtocol.close, "self.transport.close()"),
        (StunProtocol.connection_lost, "self.receiver.protocol_lost(self)"),
        (StunProtocol.datagram_received, "self.receiver.data_received(data, self.local_candidate.component)"),
        (StunProtocol.datagram_received, "message.transaction_id in self.transactions"),
        (aioice.ice.server_reflexive_candidate, "await protocol.request(request, stun_server)"),
    ]
    for owner, line in checks:
        if line not in inspect.getsource(owner):
            raise HookError(f"aioice/aiortc {owner.__qualname__} changed: use_udp_mux expects {line!r}")
    if list(inspect.signature(Connection.get_component_candidates).parameters) != ["self", "component", "addresses", "timeout"]:
        raise HookError("aioice's Connection.get_component_candidates takes other parameters")


def _hook_endpoint(
    endpoint: RTCRtpReceiver | RTCRtpSender,
    start: str,
    register: Callable[[Any], None],
    on_started: Callable[[Any], None],
    on_rtcp: RtcpHandler,
) -> None:
    """Replace ``endpoint``'s start method (``receive`` / ``send``) and its RTCP handler."""
    started = False

    async def start_once(parameters: Any) -> None:
        nonlocal started
        if not started:
            started = True
            register(parameters)
            on_started(parameters)

    async def handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        try:
            on_rtcp(packet)
        except Exception:  # an exception here would end the transport's receive loop
            logger.exception("RTCP handler failed on %s", type(packet).__name__)

    setattr(endpoint, start, start_once)
    endpoint._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def hook_receiver(
    receiver: RTCRtpReceiver,
    on_started: Callable[[RTCRtpReceiveParameters], None],
    on_rtcp: RtcpHandler,
) -> None:
    """Make ``receiver`` a pure packet source: no decoder thread, RTCP to ``on_rtcp``."""
    register = lambda parameters: receiver.transport._register_rtp_receiver(receiver, parameters)  # noqa: E731
    _hook_endpoint(receiver, "receive", register, on_started, on_rtcp)


def route_ssrc(receiver: RTCRtpReceiver, ssrc: int) -> None:
    """Route RTCP about ``ssrc`` (sender reports) to ``receiver``: aiortc learns a receiver's
    SSRCs from the RTP it routes, which the SFU's RTP sink bypasses (a simulcast layer's SSRC
    is never in the SDP)."""
    router = getattr(receiver.transport, "_rtp_router", None)
    if router is not None:
        router.ssrc_table[ssrc] = receiver


def route_sender_ssrc(sender: RTCRtpSender, ssrc: int) -> None:
    """Route RTCP feedback about ``ssrc`` (PLI, NACK, reports) to ``sender`` too: a client
    that sends simulcast layers itself, on SSRCs aiortc does not know."""
    router = getattr(sender.transport, "_rtp_router", None)
    if router is not None:
        router.senders[ssrc] = sender


def unhook_receiver(receiver: RTCRtpReceiver) -> None:
    receiver.transport._unregister_rtp_receiver(receiver)


def hook_sender(
    sender: RTCRtpSender,
    on_started: Callable[[RTCRtpSendParameters], None],
    on_rtcp: RtcpHandler,
) -> None:
    """Make ``sender`` a forwarding sender: no encoder loop, RTCP to ``on_rtcp``."""
    register = lambda parameters: sender.transport._register_rtp_sender(sender, parameters)  # noqa: E731
    _hook_endpoint(sender, "send", register, on_started, on_rtcp)


def unhook_sender(sender: RTCRtpSender) -> None:
    sender.transport._unregister_rtp_sender(sender)


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """The (media, RTX) SSRCs aiortc chose and announced for ``sender``."""
    return sender._ssrc, sender._rtx_ssrc


def renew_sender_ssrcs(transceiver: RTCRtpTransceiver) -> tuple[int, int]:
    """New (media, RTX) SSRCs for a reused m-section's sender, announced in the next offer.

    A subscriber then sees a new stream on the reused mid: its receiver does not splice
    the new track's packets onto the old one's jitter buffer or decoder state. The RTCP
    this transceiver sends (receiver reports, PLI, NACK, when it receives) uses the new
    media SSRC too.
    """
    sender = transceiver.sender
    old = {sender._ssrc, sender._rtx_ssrc}
    ssrcs: list[int] = []
    while len(ssrcs) < 2:
        ssrc = random32()
        if ssrc not in old and ssrc not in ssrcs:
            ssrcs.append(ssrc)
    sender._ssrc, sender._rtx_ssrc = ssrcs
    transceiver.receiver._set_rtcp_ssrc(sender._ssrc)
    return sender._ssrc, sender._rtx_ssrc


async def renew_receiver(transceiver: RTCRtpTransceiver) -> None:
    """Give ``transceiver`` a fresh, unstarted receiver and stop the old one (client side).

    Call it once the m-section has been negotiated ``inactive`` (after the answer is set),
    so that a later offer reusing the mid for another track starts from scratch. aiortc's
    receiver keeps everything keyed by the first stream it received: ``receive()`` starts
    only once (the new SSRCs are never registered for routing, RTX is never mapped), the
    jitter buffer, NACK generator and timestamp mapper hold the old stream's sequence
    numbers and timestamps, the decoder its reference frames, and the track its queue of
    frames nobody read. ``setRemoteDescription`` makes a new track (and a ``track`` event)
    only for a receiver without one. With a fresh receiver the reused mid behaves as a new
    m-section would: new track, new SSRC registration, empty jitter buffer and decoder.
    aiortc 1.16 has no public API for any of this (``stop()`` is irreversible).
    """
    old = transceiver.receiver
    fresh = RTCRtpReceiver(transceiver.kind, old.transport)
    fresh._set_rtcp_ssrc(transceiver.sender._ssrc)
    transceiver._RTCRtpTransceiver__receiver = fresh  # type: ignore[attr-defined]
    old.transport._unregister_rtp_receiver(old)  # (a receiver hooked by packet_receiver never started)
    await old.stop()  # ends the old track: its reader gets MediaStreamError, never a new frame


async def renew_sender(transceiver: RTCRtpTransceiver) -> None:
    """Give ``transceiver`` a fresh, unstarted sender and stop the old one (client side).

    Call it once the m-section has been negotiated ``inactive``. aiortc's sender starts once
    (``send()``), with one encoder for good: a later track on the same sender (its frames'
    timestamps start again at zero) makes libvpx refuse the input and the sender's RTP loop
    end for ever, silently. A fresh sender also announces new SSRCs and a new msid track id.
    """
    old = transceiver.sender
    fresh = RTCRtpSender(transceiver.kind, old.transport)
    fresh._stream_id = old._stream_id
    transceiver._RTCRtpTransceiver__sender = fresh  # type: ignore[attr-defined]
    transceiver.receiver._set_rtcp_ssrc(fresh._ssrc)
    old.replaceTrack(None)  # stopping the sender would stop its track (a LocalTrack may be published again)
    await old.stop()


def set_sender_msid(sender: RTCRtpSender, stream_id: str, track_id: str) -> None:
    """Choose the ``a=msid`` the subscriber sees for this m-section."""
    sender._stream_id = stream_id
    sender._track_id = track_id


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[Any]:
    """The codecs agreed for ``transceiver`` by the last completed negotiation."""
    return list(transceiver._codecs)


def negotiated_header_extensions(transceiver: RTCRtpTransceiver) -> list[Any]:
    return list(transceiver._headerExtensions)


def _protector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """``session.protect`` without pylibsrtp's per-call allocation and buffer copies.

    Uses the session's own C buffer and one reusable length cell; falls back to the
    public method if pylibsrtp's layout changes.
    """
    try:
        from pylibsrtp._binding import ffi, lib

        srtp = session._srtp[0]  # type: ignore[attr-defined]
        cdata = session._cdata  # type: ignore[attr-defined]
    except (ImportError, AttributeError):  # pragma: no cover - another pylibsrtp
        return session.protect
    length = ffi.new("int *")
    capacity = len(cdata) - 144  # SRTP_MAX_TRAILER_LEN
    owner = session  # the raw pointers above live only as long as the session
    srtp_protect = lib.srtp_protect
    memmove = ffi.memmove
    unpack = ffi.unpack

    def protect(data: bytes) -> bytes:
        size = len(data)
        if size > capacity:
            raise ValueError("packet is too long")
        memmove(cdata, data, size)
        length[0] = size
        rc = srtp_protect(srtp, cdata, length)
        if rc or owner is None:
            raise pylibsrtp.Error(f"srtp_protect failed ({rc})")
        return unpack(cdata, length[0])

    return protect


def _inspect_ice_send() -> None:
    """``rtp_writer`` sends the way aioice does, on host and on relayed (TURN) pairs alike."""
    checks: list[tuple[Any, str, str]] = [
        (aioice.ice.Connection, "sendto", "active_pair.protocol.send_data(data, active_pair.remote_addr)"),
        (aioice.ice.StunProtocol, "send_data", "self.transport.sendto(data, addr)"),
        (aioice.turn.TurnTransport, "sendto", "send_data(data, addr)"),  # through the TURN channel
        (aioice.turn.TurnTransport, "_connect", "protocol.connection_made("),  # a relayed candidate's transport
    ]
    for owner, name, line in checks:
        if line not in inspect.getsource(getattr(owner, name)):
            raise HookError(f"aioice's {owner.__name__}.{name} no longer sends the way rtp_writer does")


def _srtp_session_address(session: pylibsrtp.Session) -> int | None:
    """The libsrtp ``srtp_t`` of ``session``, for ``udpio.send_srtp`` to protect with in C;
    None when the extension is not built or pylibsrtp's layout is not the expected one."""
    global _srtp_protect_in_c
    if _srtp_protect_in_c is None:
        try:
            from pylibsrtp._binding import ffi, lib

            address = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
            signature = ffi.getctype(ffi.typeof(ffi.addressof(lib, "srtp_protect")))
        except (ImportError, AttributeError, TypeError):  # pragma: no cover - another pylibsrtp
            _srtp_protect_in_c = False
        else:  # libsrtp 2's srtp_protect(srtp_t, void *, int *): what _udpio.c calls
            _srtp_protect_in_c = "(struct srtp_ctx_t_ *, void *, int *)" in signature and udpio.use_srtp_protect(address)
    if not _srtp_protect_in_c:
        return None
    from pylibsrtp._binding import ffi

    return int(ffi.cast("uintptr_t", session._srtp[0]))  # type: ignore[attr-defined]


_srtp_protect_in_c: bool | None = None


def rtp_writer(dtls: RTCDtlsTransport) -> Callable[[bytes], bool]:
    """A synchronous writer: SRTP-protect ``data`` with the peer's keys and send it.

    Skips aiortc's three nested coroutines per packet (``_send_rtp`` -> ICE ``send`` ->
    ``sendto``); returns False when the transport is not connected. On a relayed local
    candidate (the server relaying itself through TURN) the pair's transport is aioice's
    TurnTransport, whose ``sendto`` sends through the TURN channel with a task per packet.
    """
    nominated = dtls.transport._connection._nominated
    # Caches, refreshed only when aiortc swaps the object they came from: the SRTP session
    # (and our lean protect for it), and the selected pair (its socket and peer address:
    # CandidatePair.remote_addr builds a new tuple on every call).
    # keys: the session, our lean protect for it, its srtp_t address for the mux (or None).
    keys: list[Any] = [None, None, None]
    # route: the pair, its send, its peer address, its transport's is_closing, and the mux's
    # send_rtp (plain RTP, SRTP-protected in C right before sendmmsg) or None.
    route: list[Any] = [None, None, None, None, None]

    def write(data: bytes) -> bool:
        if dtls._state is not _CONNECTED:
            return False
        pair = nominated.get(1)
        if pair is None:
            return False
        if pair is not route[0]:
            # What aioice's StunProtocol.send_data does: sendto on the pair's transport. For a
            # relayed local candidate that is aioice's TurnTransport, which has no is_closing()
            # (its sendto sends through the TURN channel and drops data once closed). On the UDP
            # mux, send_media queues the packet for the batch being handled (one sendmmsg).
            transport = pair.protocol.transport
            send = None if transport is None else getattr(transport, "send_media", transport.sendto)
            route[:] = pair, send, pair.remote_addr, getattr(transport, "is_closing", None), getattr(transport, "send_rtp", None)
        send = route[1]
        if send is None or (route[3] is not None and route[3]()):
            return False
        srtp = dtls._tx_srtp
        try:
            if 192 <= data[1] <= 223:
                send(srtp.protect_rtcp(data), route[2])
                return True
            if srtp is not keys[0]:
                keys[:] = srtp, _protector(srtp), _srtp_session_address(srtp)
            if keys[2] is not None and route[4] is not None:
                route[4](data, route[2], keys[2], srtp)
            else:
                send(keys[1](data), route[2])
        except (pylibsrtp.Error, ValueError):  # e.g. a replay beyond libsrtp's window
            return False
        return True

    return write


def packet_receiver(receiver: RTCRtpReceiver, on_packet: Callable[[RtpPacket], None]) -> None:
    """Receive encoded packets from ``receiver`` instead of decoded frames (load peers)."""
    hook_receiver(receiver, on_started=lambda parameters: None, on_rtcp=lambda packet: None)

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        on_packet(packet)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a PLI for ``media_ssrc`` from ``receiver`` (aiortc sends PLI only on decode errors)."""
    await receiver._send_rtcp_pli(media_ssrc)


def drop_rtp(receiver: RTCRtpReceiver, should_drop: Callable[[RtpPacket], bool]) -> None:
    """Simulate loss: packets for which ``should_drop`` is true never reach ``receiver``.

    The drop happens before aiortc's NACK generator sees the packet, so the receiver asks
    for a retransmission exactly as it would after real network loss.
    """
    original = receiver._handle_rtp_packet

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not should_drop(packet):
            await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


def drop_rtcp(sender: RTCRtpSender, should_drop: Callable[[AnyRtcpPacket], bool]) -> None:
    """Simulate lost feedback: RTCP for which ``should_drop`` is true never reaches ``sender``."""
    original = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        if not should_drop(packet):
            await original(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


async def send_raw_rtp(sender: RTCRtpSender, data: bytes) -> None:
    """Send arbitrary bytes as (S)RTP/RTCP on ``sender``'s transport (tests: bogus input)."""
    try:
        await sender.transport._send_rtp(data)
    except ConnectionError:
        pass

