"""scripts/device_check.sh, the one-go GPU check: its smoke mode runs here on CPU so it cannot rot;
its wheel list follows pyproject's pins; a failing step still leaves a report."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS = ["preflight", "pytest_gpu", "bench_single", "bench_streams", "server_bench"]


def driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("device_check", REPO / "scripts" / "device_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(
    *args: str, env: dict[str, str] | None = None, timeout: float = 1500
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), *args], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def test_smoke_mode_runs_every_step_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = run_script("--smoke", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "device_check.log").read_text()
    report = json.loads((out / "device_check.json").read_text())
    assert report["mode"] == "smoke" and list(report["steps"]) == STEPS
    assert {name: s["status"] for name, s in report["steps"].items()} == dict.fromkeys(STEPS, "ok")
    assert report["machine"]["device"] == "cpu"

    gpu = report["steps"]["pytest_gpu"]
    assert gpu["counts"].get("skipped", 0) >= 1 and "failed" not in gpu["counts"]  # no CUDA here
    assert "tests/engine/f5/test_gpu.py" in gpu["files"]

    single = report["steps"]["bench_single"]["result"]
    assert single["ours"]["rtf"] > 0 and single["reference"]["total_s"] > 0
    assert single["ratio_total"] > 0 and single["device"] == "cpu"

    streams = report["steps"]["bench_streams"]["result"]["levels"]
    assert {(lv["streams"], lv["mode"]) for lv in streams} == {
        (1, "batched"), (1, "unbatched"), (2, "batched"), (2, "unbatched")}
    assert all(lv["errors"] == 0 and lv["audio_s"] > 0 for lv in streams)

    server = report["steps"]["server_bench"]
    assert server["server_ready_s"] > 0
    levels = server["result"]["levels"]
    assert [lv["clients"] for lv in levels] == [1, 2]
    assert all(lv["errors"] == 0 and lv["server_ttfa_ms"]["p50"] > 0 for lv in levels)

    md = (out / "device_check.md").read_text()
    assert md.startswith("# Device check (smoke)")
    for text in [*STEPS, "Single stream", "| streams | mode |", "| clients | server TTFA"]:
        assert text in md
    log = (out / "device_check.log").read_text()
    assert "bench-engine" in log and "ready at http://127.0.0.1:" in log


def test_a_failed_preflight_still_writes_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = driver()
    monkeypatch.setattr(module, "REQUIRED", ("torch", "no_such_module_for_the_check"))
    monkeypatch.setattr(module, "ORACLE", ())
    assert module.main(["--smoke", "--install", "skipped: test", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["steps"]["preflight"]["status"] == "failed"
    assert "no_such_module_for_the_check" in report["steps"]["preflight"]["detail"]
    assert all(report["steps"][name]["status"] == "skipped" for name in STEPS[1:])
    md = (tmp_path / "device_check.md").read_text()
    assert "| preflight | failed |" in md and "wheels: skipped: test" in md


def test_time_boxes_leave_room_for_the_later_steps(tmp_path: Path) -> None:
    module = driver()
    check = module.Check(tmp_path, False, 470.0, {"install": "ok", "seconds": 20.0})
    boxes = {name: check.box(name) for name in STEPS}
    caps = {name: cap for name, (cap, _) in module.FULL_BOXES.items()}
    assert boxes == pytest.approx(caps, abs=1.0)  # a fresh budget: every step gets its cap
    assert sum(caps.values()) <= 470.0 + 20.0
    check.deadline -= 250.0  # 200 s left: a step gets what the later steps' floors leave
    floors_after_pytest = sum(module.FULL_BOXES[n][1] for n in STEPS[2:])
    assert check.box("pytest_gpu") == pytest.approx(200.0 - floors_after_pytest, abs=1.0)
    assert check.box("server_bench") == pytest.approx(120.0, abs=1.0)


def _pins(text: str) -> dict[str, str]:
    return {m[0].lower().replace("_", "-"): m[1]
            for m in re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", text)}


def test_the_wheel_list_follows_pyproject_and_the_docs() -> None:
    script = (REPO / "scripts" / "device_wheels.sh").read_text()
    wheels = _pins(script)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    not_carried = {"torch", "torchaudio"}  # on the machine; numpy is unpinned (image)
    imported_lazily = {"matplotlib", "av"}  # bench --plot; mp3/ogg of the compatible APIs
    only_on_cpu_tests = {"playwright", "mypy", "ruff", "httpx", "librosa", "pydub", "hypothesis",
                         "schemathesis", "openai"}
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", req)
        if m is None:
            continue
        name = m[1].lower().replace("_", "-")
        if name in not_carried | imported_lazily | only_on_cpu_tests:
            assert name not in wheels
            continue
        assert wheels.get(name) == m[2], f"{name}: pyproject {m[2]}, device_wheels.sh {wheels.get(name)}"
    docs = (REPO / "docs" / "PERFORMANCE.md").read_text()
    start = docs.index("<!-- device-wheels -->")
    assert _pins(docs[start : docs.index("<!-- /device-wheels -->")]) == wheels


def test_the_tiny_model_needs_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.base import InvalidOptionError
    from engine.config import EngineConfig
    from engine.f5.config import F5ModelConfig, model_config_for
    from engine.f5.engine import F5Engine

    monkeypatch.setenv("STREAM_TTS_F5_TINY", "1")
    tiny = model_config_for("F5TTS_v1_Base")
    assert tiny.depth < F5ModelConfig().depth and tiny.dim < F5ModelConfig().dim
    with pytest.raises(InvalidOptionError, match="random weights"):
        F5Engine(EngineConfig(engine="f5", device="cpu", voices_dir=str(tmp_path)))
    monkeypatch.delenv("STREAM_TTS_F5_TINY")
    assert model_config_for("F5TTS_v1_Base") == F5ModelConfig()
