"""The GPU check's driver (run by scripts/device_check.sh, which installs the wheels first).

Standard library only. Each step runs as a subprocess in its own process group with a time box
carved out of one overall budget (8 minutes by default on the GPU), its output appended to
OUTDIR/device_check.log; after every step OUTDIR/device_check.json and device_check.md are
rewritten, so a step that fails, times out or kills the machine still leaves a report.

Steps: preflight (imports, CUDA, versions) -> pytest -m gpu -> single-stream bench-engine against
the reference -> bench-engine --streams (skipped when the CLI has no --streams) -> the server bench
against ``serve --engine f5 --random-weights``. ``--smoke`` runs the same steps on CPU with a tiny
random model (STREAM_TTS_F5_TINY=1), small levels and short texts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = [PY, "-m", "stream_server"]
REQUIRED = ("numpy", "scipy", "torch", "torchaudio", "vocos", "fastapi", "uvicorn", "websockets",
            "multipart", "pypinyin", "jieba", "opuslib", "soundfile", "espeakng_loader",
            "prometheus_client", "safetensors", "huggingface_hub", "yaml", "pytest", "pytest_asyncio")
ORACLE = ("f5_tts", "x_transformers", "torchdiffeq", "rjieba")
SMOKE_TEXT = "Hello there, this is a short check."

# name -> (cap s, floor s): a step gets min(cap, what is left after the later steps' floors)
FULL_BOXES = {"preflight": (60, 10), "pytest_gpu": (100, 30), "bench_single": (110, 45),
              "bench_streams": (100, 45), "server_bench": (120, 60)}
SMOKE_BOXES = {name: (400, 20) for name in FULL_BOXES}


class Check:
    def __init__(self, outdir: Path, smoke: bool, budget_s: float, setup: dict[str, Any]) -> None:
        self.outdir, self.smoke = outdir, smoke
        self.work = Path(tempfile.mkdtemp(prefix="device-check-"))
        self.log_path = outdir / "device_check.log"
        self.log_path.touch()
        self.deadline = time.monotonic() + budget_s - setup["seconds"]
        self.boxes = SMOKE_BOXES if smoke else FULL_BOXES
        self.report: dict[str, Any] = {
            "mode": "smoke" if smoke else "full", "started_utc": _now(), "budget_s": budget_s,
            "setup": setup, "machine": {}, "steps": {},
        }
        self.env = dict(os.environ)
        self.env["TORCHINDUCTOR_CACHE_DIR"] = str(self.work / "inductor")  # shared by all steps
        if smoke:
            self.env["STREAM_TTS_F5_TINY"] = "1"

    # ------------------------------------------------------------------ plumbing
    def box(self, name: str) -> float:
        cap, floor = self.boxes[name]
        later = list(self.boxes)[list(self.boxes).index(name) + 1 :]
        left = self.deadline - time.monotonic() - sum(self.boxes[n][1] for n in later)
        return max(0.0, min(cap, left))

    def log(self, text: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def run(self, cmd: list[str], timeout_s: float) -> tuple[int | None, float, str]:
        """(exit code or None on timeout, seconds, this command's output tail)."""
        start_offset = self.log_path.stat().st_size
        self.log(f"$ {' '.join(cmd)}   (time box {timeout_s:.0f} s)")
        t0 = time.monotonic()
        with self.log_path.open("a", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _stop(proc)
                rc = None
        seconds = time.monotonic() - t0
        self.log(f"-> {'timed out' if rc is None else f'exit {rc}'} after {seconds:.1f} s")
        with self.log_path.open("rb") as f:
            f.seek(start_offset)
            tail = f.read().decode("utf-8", "replace").splitlines()[-25:]
        return rc, seconds, "\n".join(tail)

    def step(self, name: str, record: dict[str, Any]) -> None:
        self.report["steps"][name] = record
        self.save()

    def save(self) -> None:
        self.report["finished_utc"] = _now()
        (self.outdir / "device_check.json").write_text(
            json.dumps(self.report, indent=2, default=str) + "\n", encoding="utf-8")
        (self.outdir / "device_check.md").write_text(markdown(self.report), encoding="utf-8")

    def skip_if_short(self, name: str) -> float | None:
        box = self.box(name)
        if box < self.boxes[name][1]:
            self.step(name, {"status": "skipped", "detail": f"no time left ({box:.0f} s)"})
            return None
        self.log(f"\n== {name}")
        return box

    # ------------------------------------------------------------------ steps
    def preflight(self) -> bool:
        box = self.skip_if_short("preflight")
        if box is None:
            return False
        out = self.work / "preflight.json"
        probe = (
            "import importlib, json, sys\n"
            f"req, oracle = {REQUIRED!r}, {ORACLE!r}\n"
            "missing, versions = [], {}\n"
            "for m in req + oracle:\n"
            "    try:\n"
            "        mod = importlib.import_module(m)\n"
            "        versions[m] = str(getattr(mod, '__version__', ''))\n"
            "    except Exception as exc:\n"
            "        missing.append(f'{m}: {type(exc).__name__}: {exc}')\n"
            "import torch\n"
            "cuda = torch.cuda.is_available()\n"
            "info = {'python': sys.version.split()[0], 'cuda': cuda, 'versions': versions,\n"
            "        'missing': missing, 'device': torch.cuda.get_device_name(0) if cuda else 'cpu'}\n"
            f"open({str(out)!r}, 'w').write(json.dumps(info))\n"
        )
        rc, seconds, tail = self.run([PY, "-c", probe], box)
        info = _read_json(out) or {}
        self.report["machine"] = {k: info.get(k) for k in ("python", "cuda", "device", "versions")}
        missing = info.get("missing", ["(the probe did not finish)"])
        required_missing = [m for m in missing if m.split(":")[0] in REQUIRED]
        ok = rc == 0 and not required_missing and (self.smoke or bool(info.get("cuda")))
        detail = "; ".join(missing) if missing else ""
        if rc == 0 and not self.smoke and not info.get("cuda"):
            detail = "no CUDA device. " + detail
        self.step("preflight", {"status": "ok" if ok else "failed", "rc": rc, "seconds": seconds,
                                "detail": detail.strip(), "tail": "" if ok else tail})
        return ok

    def pytest_gpu(self) -> None:
        box = self.skip_if_short("pytest_gpu")
        if box is None:
            return
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                       if "mark.gpu" in p.read_text(encoding="utf-8"))
        rc, seconds, tail = self.run([PY, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                      *files], box)
        counts = {k: int(n) for n, k in re.findall(
            r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", tail)}
        status = "ok" if rc == 0 else "timeout" if rc is None else "failed"
        self.step("pytest_gpu", {"status": status, "rc": rc, "seconds": seconds, "files": files,
                                 "counts": counts, "tail": "" if status == "ok" else tail})

    def engine_flags(self) -> list[str]:
        if self.smoke:
            return ["--engine", "f5", "--random-weights", "--device", "cpu", "--dtype", "fp32",
                    "--no-compile", "--nfe", "7", "--ref-seconds", "2", "--text", SMOKE_TEXT]
        return ["--engine", "f5", "--random-weights", "--nfe", "7", "--dtype", "fp16", "--compile"]

    def bench_single(self) -> None:
        box = self.skip_if_short("bench_single")
        if box is None:
            return
        out = self.work / "single.json"
        runs = "1" if self.smoke else "3"
        rc, seconds, tail = self.run([*CLI, "bench-engine", *self.engine_flags(), "--runs", runs,
                                      "--compare-reference", "--json", str(out)], box)
        self.step("bench_single", _result(rc, seconds, tail, _read_json(out)))

    def bench_streams(self) -> None:
        box = self.skip_if_short("bench_streams")
        if box is None:
            return
        help_text = subprocess.run([*CLI, "bench-engine", "--help"], cwd=REPO, env=self.env,
                                   capture_output=True, text=True, timeout=60).stdout
        if "--streams" not in help_text or "--compare-unbatched" not in help_text:
            self.step("bench_streams", {"status": "skipped", "detail": "bench-engine has no "
                                        "--streams/--compare-unbatched here (branch batchsched)"})
            return
        out = self.work / "streams.json"
        levels = "1,2" if self.smoke else "1,4,16,64"
        rc, seconds, tail = self.run([*CLI, "bench-engine", *self.engine_flags(), "--streams", levels,
                                      "--compare-unbatched", "--json", str(out)], box)
        self.step("bench_streams", _result(rc, seconds, tail, _read_json(out)))

    def server_bench(self) -> None:
        box = self.skip_if_short("server_bench")
        if box is None:
            return
        t0 = time.monotonic()
        port = _free_port()
        flags = ["--engine", "f5", "--random-weights", "--host", "127.0.0.1", "--port", str(port),
                 "--voices-dir", str(self.work / "voices")]  # none: the built-in eSpeak voice
        if self.smoke:
            flags += ["--device", "cpu", "--dtype", "fp32", "--no-compile"]
        self.log(f"$ {' '.join([*CLI, 'serve', *flags])}   (in the background)")
        with self.log_path.open("a", encoding="utf-8") as out:
            server = subprocess.Popen([*CLI, "serve", *flags], cwd=REPO, env=self.env, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        record: dict[str, Any] = {}
        try:
            ready_s = _wait_healthy(port, server, t0 + box * 0.6)
            record["server_ready_s"] = ready_s
            if ready_s is None:
                record.update(status="failed", detail="server not ready (see the log)",
                              rc=server.poll())
                return
            out_json = self.work / "server.json"
            cmd = [*CLI, "bench", "--url", f"ws://127.0.0.1:{port}/v1/stream", "--rounds", "1",
                   "--clients", "1,2" if self.smoke else "1,4,16,64", "--json", str(out_json)]
            if self.smoke:
                texts = self.work / "texts.txt"
                texts.write_text(SMOKE_TEXT + "\n", encoding="utf-8")
                cmd += ["--texts", str(texts)]
            left = max(1.0, t0 + box - time.monotonic())
            rc, seconds, tail = self.run([*cmd, "--timeout", f"{max(5.0, left - 5):.0f}"], left)
            record.update(_result(rc, seconds, tail, _summary_levels(_read_json(out_json))))
        finally:
            _stop(server)
            record["seconds"] = time.monotonic() - t0
            self.step("server_bench", record)


# ---------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group we started, SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(port: int, server: subprocess.Popen[Any], until: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() < until and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _result(rc: int | None, seconds: float, tail: str, result: Any) -> dict[str, Any]:
    status = "timeout" if rc is None else "ok" if rc == 0 and result is not None else "failed"
    out = {"status": status, "rc": rc, "seconds": seconds, "result": result}
    if status != "ok":
        out["tail"] = tail
    return out


def _summary_levels(report: Any) -> Any:
    """The server bench's report without its per-utterance results (kept in the log's JSON)."""
    if not isinstance(report, dict):
        return None
    levels = [{k: v for k, v in lv.items() if k != "results"} for lv in report.get("levels", [])]
    return {"config": report.get("config"), "levels": levels}


def _f(x: Any, digits: int = 3) -> str:
    return "-" if not isinstance(x, int | float) else f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """A short human summary of the report."""
    m = report.get("machine", {})
    lines = [f"# Device check ({report['mode']})", "",
             f"Started {report['started_utc']}, last update {report.get('finished_utc', '-')}; "
             f"device {m.get('device', '?')}, Python {m.get('python', '?')}, torch "
             f"{(m.get('versions') or {}).get('torch', '?')}; wheels: {report['setup']['install']}.",
             "", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name, st in report["steps"].items():
        detail = st.get("detail", "")
        if "counts" in st:
            detail = ", ".join(f"{v} {k}" for k, v in st["counts"].items()) or detail
        lines.append(f"| {name} | {st.get('status', '?')} | {_f(st.get('seconds'), 1)} | {detail} |")
    single = (report["steps"].get("bench_single") or {}).get("result") or {}
    if single:
        ours, ref = single.get("ours", {}), single.get("reference", {})
        lines += ["", "Single stream (median of runs): ours RTF " + _f(ours.get("rtf"), 4)
                  + f", first-segment TTFA {_f((ours.get('ttfa_s') or 0) * 1000, 0)} ms, warm-up "
                  f"{_f(single.get('warmup_s'), 1)} s; reference total {_f(ref.get('total_s'))} s; "
                  f"speed ratio ours/reference {_f(single.get('ratio_total'))} "
                  f"(best of runs {_f(single.get('ratio_total_min'))})."]
    streams = (report["steps"].get("bench_streams") or {}).get("result") or {}
    if streams.get("levels"):
        lines += ["", "| streams | mode | first audio p50 / p95 ms | x real time | stream RTF p50 "
                  "| underruns | rows/step |", "|---|---|---|---|---|---|---|"]
        for lv in streams["levels"]:
            lines.append(f"| {lv.get('streams', lv.get('n_streams', '?'))} | {lv.get('mode')} | "
                         f"{_f(lv.get('first_audio_ms_p50'), 0)} / {_f(lv.get('first_audio_ms_p95'), 0)}"
                         f" | {_f(lv.get('aggregate_x_realtime'), 2)} | {_f(lv.get('stream_rtf_p50'))}"
                         f" | {lv.get('underruns', '-')} | {_f(lv.get('mean_rows_per_sample_step'), 2)} |")
    server = (report["steps"].get("server_bench") or {}).get("result") or {}
    if server.get("levels"):
        lines += ["", "| clients | server TTFA p50 / p95 ms | client TTFA p50 / p95 ms | RTF p50 "
                  "| underruns | errors |", "|---|---|---|---|---|---|"]
        for lv in server["levels"]:
            st, ct = lv.get("server_ttfa_ms", {}), lv.get("client_ttfa_ms", {})
            lines.append(f"| {lv.get('clients')} | {_f(st.get('p50'), 1)} / {_f(st.get('p95'), 1)} | "
                         f"{_f(ct.get('p50'), 1)} / {_f(ct.get('p95'), 1)} | "
                         f"{_f((lv.get('rtf') or {}).get('p50'))} | "
                         f"{(lv.get('underruns') or {}).get('total', '-')} | {lv.get('errors')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny random model, small levels")
    p.add_argument("--install", default="not run", help="the launcher's wheel install result")
    p.add_argument("--setup-s", type=float, default=0.0, help="seconds the launcher spent")
    p.add_argument("--budget-s", type=float,
                   default=float(os.environ.get("DEVICE_CHECK_BUDGET_S", 0)) or None)
    args = p.parse_args(argv)
    budget_s = args.budget_s or (1800.0 if args.smoke else 470.0)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    check = Check(outdir, args.smoke, budget_s, {"install": args.install, "seconds": args.setup_s})
    check.save()
    ready = check.preflight()
    if ready:
        for name in list(check.boxes)[1:]:
            try:
                getattr(check, name)()
            except Exception as exc:  # a broken step must not cost the others their report
                check.step(name, {"status": "failed", "detail": f"driver error: {exc!r}"})
    else:
        for name in list(check.boxes)[1:]:
            check.step(name, {"status": "skipped", "detail": "preflight failed"})
    check.save()
    failed = [n for n, s in check.report["steps"].items() if s.get("status") not in ("ok", "skipped")]
    print(f"device check ({check.report['mode']}): "
          + ", ".join(f"{n} {s.get('status')}" for n, s in check.report["steps"].items())
          + f"; report in {outdir}/device_check.md")
    return 1 if failed or not ready else 0


if __name__ == "__main__":
    sys.exit(main())
