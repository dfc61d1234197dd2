#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what scripts/device_check.sh installs on a GPU machine that has
# Python 3.12 with torch 2.11 + torchaudio (and their own dependencies) but no network.
# Run on a dev machine (x86_64, pip and apt-get reach their registries). Usage:
#     scripts/device_wheels.sh [DIR]          (default DIR: .whl)
# Not carried: torch, torchaudio and their dependencies, and numpy + scipy (51 MB together, in
# every CUDA torch image, the device image included; device_check.sh stops with a clear message
# when they are missing). The pins below follow pyproject.toml (tests/test_device_check.py checks).
set -euo pipefail
dir="${1:-.whl}"
python="${PYTHON:-python3}"
rm -rf "$dir"
mkdir -p "$dir"

# Wheels for CPython 3.12, manylinux x86_64: the runtime (server, F5 engine, eSpeak, benches),
# pytest, and the reference F5-TTS oracle for --compare-reference (f5-tts itself without its
# trainer dependencies, as the Makefile installs it).
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d "$dir" \
    vocos==0.1.0 einops==0.8.2 pyyaml==6.0.4 huggingface-hub==2.4.0 hf-xet==1.8.0 \
    httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 tqdm==4.70.1 click==8.5.1 \
    packaging==26.4 typing-extensions==4.16.0 \
    websockets==17.4 fastapi==0.163.2 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7 anyio==4.16.0 \
    idna==3.20 opentelemetry-api==1.45.2 uvicorn==0.54.0 h11==0.16.0 python-multipart==0.0.34 \
    pypinyin==0.55.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 espeakng-loader==0.2.4 \
    prometheus-client==0.26.0 safetensors==0.8.0 \
    pytest==9.2.0 pytest-asyncio==1.5.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 \
    f5-tts==1.1.22 x-transformers==2.31.10 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 \
    torch-einops-utils==0.2.0 torchdiffeq==0.2.5 rjieba==0.2.2

# Pure-Python packages published only as source: built into wheels here (no build on the device).
"$python" -m pip wheel --no-deps -w "$dir" jieba==0.42.1 opuslib==3.0.1 encodec==0.1.1

# libopus for opuslib, in case the device image lacks it (device_check.sh copies only the .so).
if command -v apt-get >/dev/null; then
    (cd "$dir" && apt-get download libopus0 >/dev/null)
fi

du -sh "$dir"
