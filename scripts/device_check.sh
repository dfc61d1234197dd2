#!/usr/bin/env bash
# The GPU check, in one go (docs/PERFORMANCE.md, "The GPU check"). Usage:
#     scripts/device_check.sh [--smoke] OUTDIR
# On a GPU machine with Python 3.12 + torch 2.11 + torchaudio and no network: installs our other
# dependencies from .whl/ (scripts/device_wheels.sh fills it on a dev machine), then runs
# scripts/device_check.py: pytest -m gpu, the single-stream engine bench against the reference,
# the batched engine bench, and the server bench, each time-boxed so the whole fits 8 minutes.
# Writes OUTDIR/device_check.json, device_check.md and device_check.log even when a step fails.
# --smoke: the same path on CPU with a tiny random model (make test runs it).
set -uo pipefail

smoke=()
outdir=""
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=(--smoke) ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        -*) echo "device_check: unknown option $arg" >&2; exit 2 ;;
        *) outdir="$arg" ;;
    esac
done
if [ -z "$outdir" ]; then
    echo "usage: scripts/device_check.sh [--smoke] OUTDIR" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
mkdir -p "$outdir"
log="$outdir/device_check.log"
: >"$log"
started=$(date +%s)

# 1. our dependencies from the wheels folder (skipped when there is none: a dev machine's venv)
install="skipped: no wheels in $repo/.whl"
if compgen -G "$repo/.whl/*.whl" >/dev/null; then
    site="$(mktemp -d /tmp/stream-tts-site.XXXXXX)"
    echo "== install: $(ls "$repo"/.whl/*.whl | wc -l) wheels from .whl into $site" >>"$log"
    # byte-compiled here: on Python 3.12 jieba and opuslib warn while compiling (SyntaxWarning),
    # which pytest (warnings are errors) would turn into import errors at first import
    if timeout 180 "$python" -m pip install -q --no-index --no-deps --no-cache-dir \
            --upgrade --target "$site" "$repo"/.whl/*.whl >>"$log" 2>&1; then
        install="ok"
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        install="failed (pip exit $?, see the log)"
    fi
fi
# libopus for opuslib: the .so from the carried Debian package, when the machine has none
if ! ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0'; then
    deb="$(compgen -G "$repo/.whl/libopus0_*.deb" | head -n 1)"
    if [ -n "$deb" ] && command -v dpkg-deb >/dev/null; then
        tmp="$(mktemp -d)"
        dpkg-deb -x "$deb" "$tmp" && cp -a "$tmp"/usr/lib/*/libopus.so.0* /usr/local/lib/ \
            && ldconfig && echo "== libopus installed from $(basename "$deb")" >>"$log"
        rm -rf "$tmp"
    else
        echo "== no libopus on this machine and no libopus0 .deb in .whl" >>"$log"
    fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

exec "$python" "$repo/scripts/device_check.py" "${smoke[@]}" --install "$install" \
    --setup-s "$(( $(date +%s) - started ))" "$outdir"
