#!/usr/bin/env bash
# Install what the test suite needs, then run it inside a private network namespace.
# Usage: tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # the web client's tests (tests/test_web_*.py)
command -v turnserver >/dev/null 2>&1 || need_apt+=(coturn)  # tests/test_turn.py
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)  # induced loss inside the test namespace (tests/test_network_quality.py)
command -v firefox-esr >/dev/null 2>&1 || need_apt+=(firefox-esr)  # tests/test_web_firefox.py, driven over WebDriver BiDi
command -v npm >/dev/null 2>&1 || need_apt+=(npm)  # fetches the official twilio-video SDK (tests/test_twilio_sdk.py)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt)"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv; then  # Debian's own python3 needs python3-venv for this
    rm -rf .venv
    echo "installing python3-venv (apt)"
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# The official twilio-video SDK, unmodified, into a cache outside git (the namespace has no route out).
.venv/bin/python -m tests.helpers.twilio_sdk >/dev/null || echo "twilio-video was not fetched: tests/test_twilio_sdk.py will skip"

exec tests/netns.sh .venv/bin/python -m pytest "$@"
