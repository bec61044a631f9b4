"""Simulcast negotiation on the SFU's recvonly m-sections (RFC 8853, RFC 8851), which
aiortc does not do: its offers carry no ``a=rid`` / ``a=simulcast`` and it ignores them in
answers. The Peer adds them to the offer text it sends and reads the answer's text.

The SFU offers every video publication's section ``a=rid:<rid> recv`` for three RIDs, low to
high, with ``a=simulcast:recv q;h;f`` and the rtp-stream-id / repaired-rtp-stream-id header
extensions. A publisher that wants simulcast answers ``a=simulcast:send`` with the RIDs it
sends (a browser: one encoding each); one that does not (our /sdk.js removes the lines unless
asked for simulcast, aiortc ignores them) answers without, and its track has one layer.
Packets are mapped to layers by the RID header extension (RTX ones by the repaired RID), so
the SDP never has to announce SSRCs. Only sections that offer VP8 get the RIDs (the SFU rewrites VP8 picture IDs across
layer switches; an H.264-only room publishes one encoding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
RIDS = ("q", "h", "f")  # quarter, half and full resolution, as browsers name them

_EXTMAP = re.compile(r"^a=extmap:(\d+)(?:/\S+)? (\S+)")


@dataclass(frozen=True)
class SimulcastAnswer:
    """What a publisher's answer says of one m-section: the RIDs it sends (in the offer's
    order, low to high) and the header extension IDs that carry them."""

    rids: list[str]
    rid_id: int
    repaired_rid_id: int


def offer_simulcast(sdp: str, mids: set[str]) -> str:
    """Add the simulcast receive attributes to the video m-sections whose MID is in ``mids``."""
    if not mids:
        return sdp
    lines = sdp.split("\r\n")
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        mid = next((line[6:] for line in block if line.startswith("a=mid:")), None)
        vp8 = any(re.match(r"a=rtpmap:\d+ VP8/", line, flags=re.IGNORECASE) for line in block)
        if block and block[0].startswith("m=video") and mid in mids and vp8:
            used = [int(m.group(1)) for m in map(_EXTMAP.match, block) if m]
            first = max(used, default=0) + 1
            if first + 1 <= 14:  # (one-byte header elements only)
                at = max((i for i, line in enumerate(block) if line.startswith("a=extmap:")), default=len(block) - 1) + 1
                block[at:at] = [f"a=extmap:{first} {RID_URI}", f"a=extmap:{first + 1} {REPAIRED_RID_URI}"]
                block.extend(f"a=rid:{rid} recv" for rid in RIDS)
                block.append("a=simulcast:recv " + ";".join(RIDS))
        out.extend(block)
        block.clear()

    for line in lines:
        if line.startswith("m="):
            flush()
        if block or line.startswith("m="):
            block.append(line)
        else:
            out.append(line)
    trailing = block and block[-1] == ""
    if trailing:
        block.pop()
    flush()
    if trailing:
        out.append("")
    return "\r\n".join(out)


def answered_simulcast(sdp: str) -> dict[str, SimulcastAnswer]:
    """{mid: SimulcastAnswer} of each m-section the answer sends as simulcast."""
    found: dict[str, SimulcastAnswer] = {}
    for block in re.split(r"\r?\n(?=m=)", sdp):
        lines = block.splitlines()
        mid = next((line[6:].strip() for line in lines if line.startswith("a=mid:")), None)
        send = next((line.split(" ", 1)[1] for line in lines if line.startswith("a=simulcast:send ")), None)
        if mid is None or send is None:
            continue
        ids = {m.group(2): int(m.group(1)) for m in map(_EXTMAP.match, lines) if m}
        # "q;h;f", alternatives "q,x;h", paused "~q": the first choice of each stream.
        rids = [stream.split(",")[0].lstrip("~") for stream in send.split()[0].split(";") if stream]
        rids.sort(key=lambda rid: RIDS.index(rid) if rid in RIDS else len(RIDS))  # low to high
        if len(rids) >= 2 and ids.get(RID_URI):
            found[mid] = SimulcastAnswer(rids, ids[RID_URI], ids.get(REPAIRED_RID_URI, 0))
    return found


def answer_simulcast(answer: str, offer: str, layers: dict[str, int]) -> tuple[str, dict[str, SimulcastAnswer]]:
    """A publisher's side (a client that sends layers itself): add ``a=simulcast:send`` with the
    first ``layers[mid]`` RIDs the offer's section receives, and the RID header extensions, to
    each such section of an answer aiortc made. Returns the answer and what it now says."""
    offered: dict[str, tuple[list[str], dict[str, int]]] = {}
    for block in re.split(r"\r?\n(?=m=)", offer):
        lines = block.splitlines()
        mid = next((line[6:].strip() for line in lines if line.startswith("a=mid:")), None)
        if mid is not None:
            rids = [line[6:].split()[0] for line in lines if line.startswith("a=rid:") and line.split()[1:2] == ["recv"]]
            offered[mid] = (rids, {m.group(2): int(m.group(1)) for m in map(_EXTMAP.match, lines) if m})
    said: dict[str, SimulcastAnswer] = {}
    blocks = re.split(r"\r\n(?=m=)", answer)
    for i, block in enumerate(blocks):
        mid = next((line[6:].strip() for line in block.split("\r\n") if line.startswith("a=mid:")), None)
        count = layers.get(mid or "", 0)
        rids, ids = offered.get(mid or "", ([], {}))
        if count < 2 or len(rids) < count or not ids.get(RID_URI):
            continue
        rids = rids[:count]
        extra = [f"a=extmap:{ids[RID_URI]} {RID_URI}"]
        if ids.get(REPAIRED_RID_URI):
            extra.append(f"a=extmap:{ids[REPAIRED_RID_URI]} {REPAIRED_RID_URI}")
        extra += [f"a=rid:{rid} send" for rid in rids] + ["a=simulcast:send " + ";".join(rids)]
        body = block[:-2] if block.endswith("\r\n") else block
        blocks[i] = body + "\r\n" + "\r\n".join(extra) + ("\r\n" if block.endswith("\r\n") else "")
        said[str(mid)] = SimulcastAnswer(rids, ids[RID_URI], ids.get(REPAIRED_RID_URI, 0))
    return "\r\n".join(blocks), said
