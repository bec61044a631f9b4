"""Run `sfu serve` with every codec entry point wrapped, and report what was used.

Usage: python -m tests.helpers.guarded_server REPORT.json [sfu serve args...]
On SIGTERM the server shuts down and REPORT.json lists how many decoders, encoders,
decoder threads and jitter-buffer insertions the server process made: the forwarding
path must make none.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from typing import Any

import aiortc.codecs
import aiortc.jitterbuffer
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import av

used: Counter[str] = Counter()


def _count(name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        used[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def install() -> None:
    aiortc.codecs.get_decoder = _count("get_decoder", aiortc.codecs.get_decoder)
    aiortc.codecs.get_encoder = _count("get_encoder", aiortc.codecs.get_encoder)
    aiortc.rtcrtpreceiver.get_decoder = _count("get_decoder", aiortc.rtcrtpreceiver.get_decoder)
    aiortc.rtcrtpsender.get_encoder = _count("get_encoder", aiortc.rtcrtpsender.get_encoder)
    aiortc.jitterbuffer.JitterBuffer.add = _count("jitterbuffer_add", aiortc.jitterbuffer.JitterBuffer.add)
    original_create = av.CodecContext.create

    def create(*args: Any, **kwargs: Any) -> Any:
        used["codec_context"] += 1
        return original_create(*args, **kwargs)

    av.CodecContext.create = create  # type: ignore[method-assign]
    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.endswith("-decoder"):
            used["decoder_thread"] += 1
        original_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]


def main() -> int:
    report, args = sys.argv[1], sys.argv[2:]
    install()
    from sfuserver.cli import main as sfu_main

    try:
        return sfu_main(["serve", *args])
    finally:
        with open(report, "w") as f:
            json.dump(dict(used), f)


if __name__ == "__main__":
    sys.exit(main())
