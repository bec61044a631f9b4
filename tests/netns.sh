#!/usr/bin/env bash
# Run a command inside a private network namespace: loopback plus one test interface
# (t0, 10.213.0.1) that exists only there, so no packet can leave this machine.
# aiortc, Chromium and Janus skip loopback when gathering candidates; t0 gives them a
# host candidate that is not the machine's real address. No root needed (unshare -r).
set -euo pipefail
exec unshare -rn bash -c '
  ip link set lo up
  ip link add t0 type ifb
  ip addr add 10.213.0.1/24 dev t0
  ip link set t0 up
  export SFU_TEST_NETNS=1
  exec "$@"' isolated "$@"
