"""The pure half of ``stream-tts bench``: statistics, playback simulation and the report.

No sockets, no clock: ``bench`` measures ``ClientResult``s, this module turns them into per-level
summaries, the printed table, the JSON report (NaN -> null) and the TTFA plot. Percentiles
interpolate linearly between ranks, as numpy does by default; an empty sample gives NaN, never an
error, so a level where every client failed still reports.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

PERCENTILES = (50, 90, 95, 99)

# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float]:
    """n, mean, max and p50/p90/p95/p99 of ``values`` (NaN where empty)."""
    out: dict[str, float] = {"n": len(values)}
    out["mean"] = sum(values) / len(values) if values else math.nan
    out["max"] = max(values) if values else math.nan
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    return out


class Playback(NamedTuple):
    underruns: int  # frames that arrived after they should have started playing
    stall_s: float  # total time playback waited for them
    at_s: list[float]  # audio position (s of audio played before) of each underrun


def simulate_playback(
    arrivals_s: list[float], durations_s: list[float], prebuffer_s: float = 0.0
) -> Playback:
    """Play frames back to back, starting ``prebuffer_s`` after the first one arrives; a frame
    that is not there when it is due stalls playback until it arrives."""
    if len(arrivals_s) != len(durations_s):
        raise ValueError("arrivals and durations must have the same length")
    if not arrivals_s:
        return Playback(0, 0.0, [])
    clock = arrivals_s[0] + prebuffer_s  # when the next frame is due to start playing
    stall, position, at = 0.0, 0.0, []
    for arrival, duration in zip(arrivals_s, durations_s, strict=True):
        if arrival > clock + 1e-9:  # 1 ns: only float rounding of the running clock is forgiven
            at.append(position)
            stall += arrival - clock
            clock = arrival
        clock += duration
        position += duration
    return Playback(len(at), stall, at)


# --------------------------------------------------------------------------- results and report


@dataclass
class ClientResult:
    """One utterance as one client saw it. Times in ms; None when not measured."""

    clients: int
    text_index: int
    client_ttfa_ms: float | None = None
    sentence_ttfa_ms: float | None = None
    server_ttfa_ms: float | None = None
    rtf: float | None = None
    segment_rtfs: list[float] = field(default_factory=list)
    audio_ms: float | None = None  # done.audio_ms
    decoded_ms: float = 0.0  # duration of the decoded Opus frames
    frames: int = 0
    underruns: int = 0
    stall_ms: float = 0.0
    underrun_at_ms: list[float] = field(default_factory=list)  # audio positions, first 20
    wall_ms: float = 0.0
    error: str | None = None
    refused: str | None = None  # the refusal code (overloaded, over_capacity): not measured


def summarize_level(clients: int, results: list[ClientResult]) -> dict[str, Any]:
    """Aggregate one concurrency level (errored and refused clients counted, not measured)."""
    ok = [r for r in results if r.error is None and r.refused is None]

    def values(name: str) -> list[float]:
        return [float(getattr(r, name)) for r in ok if getattr(r, name) is not None]

    return {
        "clients": clients,
        "utterances": len(results),
        "errors": sum(1 for r in results if r.error is not None),
        "refused": sum(1 for r in results if r.error is None and r.refused is not None),
        "client_ttfa_ms": summarize(values("client_ttfa_ms")),
        "sentence_ttfa_ms": summarize(values("sentence_ttfa_ms")),
        "server_ttfa_ms": summarize(values("server_ttfa_ms")),
        "rtf": summarize(values("rtf")),
        "segment_rtf": summarize([x for r in ok for x in r.segment_rtfs]),
        "underruns": {**summarize(values("underruns")), "total": sum(r.underruns for r in ok)},
        "stall_ms": summarize(values("stall_ms")),
        "audio_s": sum(r.decoded_ms for r in ok) / 1000.0,
        "results": [asdict(r) for r in results],
    }


def _fmt(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3f}"


def format_table(levels: list[dict[str, Any]]) -> str:
    """The printed report: one row per concurrency level."""
    head = (
        f"{'clients':>7} {'utts':>5} {'err':>4} {'ref':>4} | {'client TTFA ms p50/p90/p99':>26} | "
        f"{'sentence TTFA p50/p90/p99':>25} | {'server TTFA p50/p95/p99':>23} | "
        f"{'RTF p50/p90':>13} | {'underruns':>9} {'stall ms p99':>12}"
    )
    rows = [head, "-" * len(head)]

    def trio(s: dict[str, float], qs: tuple[int, ...]) -> str:
        return "/".join(_fmt(s[f"p{q}"]) for q in qs)

    for lv in levels:
        rows.append(
            f"{lv['clients']:>7} {lv['utterances']:>5} {lv['errors']:>4} {lv.get('refused', 0):>4} | "
            f"{trio(lv['client_ttfa_ms'], (50, 90, 99)):>26} | "
            f"{trio(lv['sentence_ttfa_ms'], (50, 90, 99)):>25} | "
            f"{trio(lv['server_ttfa_ms'], (50, 95, 99)):>23} | "
            f"{trio(lv['rtf'], (50, 90)):>13} | "
            f"{lv['underruns']['total']:>9} {_fmt(lv['stall_ms']['p99']):>12}"
        )
    return "\n".join(rows)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN replaced by None (JSON has no NaN), through dicts and lists."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, config: dict[str, Any], levels: list[dict[str, Any]]) -> None:
    """Write the full report (config, per-level summaries and per-utterance results); NaN -> null."""
    Path(path).write_text(json.dumps(json_safe({"config": config, "levels": levels}), indent=2))


def write_plot(path: str | Path, levels: list[dict[str, Any]]) -> None:
    """PNG of TTFA CDFs, one colour per level: client TTFA (solid), first-sentence TTFA (dotted,
    when streaming tokens) and server TTFA (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    curves = (
        ("client_ttfa_ms", "-", "client"),
        ("sentence_ttfa_ms", ":", "first sentence"),
        ("server_ttfa_ms", "--", "server"),
    )
    for i, lv in enumerate(levels):
        colour = f"C{i % 10}"
        ok = [r for r in lv["results"] if r["error"] is None and r.get("refused") is None]
        for key, style, label in curves:
            xs = sorted(r[key] for r in ok if r[key] is not None)
            if not xs or (
                key == "sentence_ttfa_ms"
                and all(r["sentence_ttfa_ms"] == r["client_ttfa_ms"] for r in ok)
            ):
                continue  # whole-text mode: the sentence curve is the client curve
            ys = [0.0] + [(k + 1) / len(xs) for k in range(len(xs))]
            ax.step(
                [xs[0]] + xs,
                ys,
                where="post",
                linestyle=style,
                color=colour,
                label=f"{lv['clients']} clients: {label}",
            )
    if ax.lines:
        ax.set_xscale("log")  # TTFAs span single milliseconds to seconds (token streaming)
    ax.set_xlabel("TTFA (ms, log scale)")
    ax.set_ylabel("fraction of utterances")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Time to first audio, CDF per concurrency level")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
