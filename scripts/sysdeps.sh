#!/usr/bin/env bash
# Install the system packages stream-tts needs. Usage: scripts/sysdeps.sh [serve|test]
#   serve: libopus0 (Opus encoder used by opuslib)
#   test:  libopus0 + chromium (headless browser tests) + haproxy (Ray Serve's HAProxy ingress)
set -euo pipefail
mode="${1:-serve}"
need=()
if ! ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0'; then need+=(libopus0); fi
if [ "$mode" = test ] && [ ! -x /usr/bin/chromium ]; then need+=(chromium); fi
if [ "$mode" = test ] && ! command -v haproxy >/dev/null; then need+=(haproxy); fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "missing system packages: ${need[*]}" >&2
    echo "install them with your package manager, e.g.: sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
