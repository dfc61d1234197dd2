"""The demo page in headless Chromium against a real eSpeak server: load, speak, stop, PCM, fallback."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.web_demo.browser_helpers import PageErrors

pytestmark = pytest.mark.browser

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs far away."
LONG_TEXT = " ".join(
    [
        "This is a long paragraph that keeps the player busy for several seconds.",
        "It has a few sentences, so the server streams more than one segment.",
        "Nobody should hear the end of it, because the test presses stop early.",
        "If you can read this aloud, stop did not work.",
    ]
)
SPEAK = "text => window.ttsDemo.speak(text)"


def open_demo(page: Page, url: str) -> None:
    page.goto(url + "/")
    page.evaluate("() => window.ttsDemo.ready")


def assert_played_in_full(stats: dict) -> None:
    done = stats["serverDone"]
    assert done is not None and done["type"] == "done"
    assert stats["framesDecoded"] > 0 and stats["framesDecoded"] == stats["framesReceived"]
    assert stats["samplesPlayed"] > 0
    expected_s = done["audio_ms"] / 1000.0
    assert abs(stats["secondsPlayed"] - expected_s) <= 0.1 * expected_s, (
        stats["secondsPlayed"],
        expected_s,
    )
    assert stats["underruns"] == 0
    assert stats["finished"] and not stats["playing"]
    assert stats["lastError"] is None


def test_page_loads_and_lists_voices(page: Page, server_url: str, page_errors: PageErrors) -> None:
    open_demo(page, server_url)
    voices = page.eval_on_selector_all("#voice option", "opts => opts.map(o => o.value)")
    assert "en-us" in voices and "cmn" in voices
    assert page.input_value("#voice") == "auto"  # the server's default voice is preselected
    assert page.is_hidden("#nfe-field")  # eSpeak has no NFE option
    assert page.is_hidden("#notice")  # WebCodecs works on 127.0.0.1: no fallback notice
    assert "espeak" in page.inner_text("#engine-pill")
    assert page_errors.messages == []


def test_speak_plays_the_whole_utterance_without_underruns(
    page: Page, server_url: str, page_errors: PageErrors, tmp_path: Path
) -> None:
    open_demo(page, server_url)
    page.fill("#text", SENTENCE)
    stats = page.evaluate(SPEAK, SENTENCE)
    assert stats["format"] == "opus"
    assert_played_in_full(stats)
    assert stats["ttfaMs"] > 0 and stats["serverTtfaMs"] > 0
    # the readout shows the numbers, and every segment is listed (the last one was highlighted)
    assert re.fullmatch(r"\d+ ms", page.inner_text("#stat-ttfa"))
    assert re.fullmatch(r"\d+ ms", page.inner_text("#stat-server-ttfa"))
    assert page.inner_text("#stat-underruns") == "0"
    segments = page.eval_on_selector_all("#segments li", "lis => lis.map(li => li.textContent)")
    assert len(segments) == stats["serverDone"]["segments"] and "".join(segments).startswith(
        "The quick"
    )
    assert page.inner_text("#caption") == segments[-1]
    # the demo screenshot in docs/ is made by this test (STREAM_TTS_SCREENSHOT=docs/screenshot.png)
    shot = os.environ.get("STREAM_TTS_SCREENSHOT") or str(tmp_path / "demo.png")
    page.screenshot(path=shot)
    assert Path(shot).stat().st_size > 0
    assert page_errors.messages == []


def test_stop_silences_playback_and_decodes_nothing_more(
    page: Page, server_url: str, page_errors: PageErrors
) -> None:
    open_demo(page, server_url)
    page.evaluate("text => { window.speaking = window.ttsDemo.speak(text); }", LONG_TEXT)
    page.wait_for_function("() => window.ttsDemo.stats.secondsPlayed > 0.4")
    at_stop, soon, later = page.evaluate(
        """async () => {
            const d = window.ttsDemo, sleep = ms => new Promise(r => setTimeout(r, ms));
            document.getElementById("stop").click();
            const atStop = d.stats;
            await sleep(150);
            const soon = d.stats;
            await sleep(500);
            return [atStop, soon, d.stats];
        }"""
    )
    rate = at_stop["outputRate"]
    # at most 100 ms of audio after the click (the last report may be ~20 ms old), then nothing
    assert soon["samplesPlayed"] - at_stop["samplesPlayed"] <= 0.1 * rate
    assert later["samplesPlayed"] == soon["samplesPlayed"]
    assert not soon["playing"] and not later["playing"]
    # the utterance was cut short, and no frame of it was decoded after the stop
    assert later["secondsPlayed"] < 2.0  # LONG_TEXT is about 15 s of speech
    assert later["framesDecoded"] == at_stop["framesDecoded"]
    stopped = page.evaluate("() => window.speaking")
    assert not stopped["finished"]
    # the page is still usable: the next utterance plays in full
    assert_played_in_full(page.evaluate(SPEAK, "Back again."))
    assert page_errors.messages == []


def test_pcm_format_plays_too(page: Page, server_url: str, page_errors: PageErrors) -> None:
    open_demo(page, server_url)
    page.select_option("#format", "pcm_s16le")
    stats = page.evaluate(SPEAK, SENTENCE)
    assert stats["format"] == "pcm_s16le"
    assert_played_in_full(stats)
    assert page_errors.messages == []


def test_without_webcodecs_the_page_switches_to_pcm(
    page: Page, server_url: str, page_errors: PageErrors
) -> None:
    page.add_init_script("delete window.AudioDecoder;")
    open_demo(page, server_url)
    assert page.input_value("#format") == "pcm_s16le"
    assert "using PCM" in page.inner_text("#notice")
    stats = page.evaluate(SPEAK, "Short and sweet.")
    assert stats["format"] == "pcm_s16le"
    assert_played_in_full(stats)
    assert page_errors.messages == []


def test_speak_while_typing_streams_text_and_flushes_on_enter(
    page: Page, server_url: str, page_errors: PageErrors
) -> None:
    open_demo(page, server_url)
    page.fill("#text", "")
    page.click("label.switch")  # the toggle's visible part; the checkbox itself is visually hidden
    assert page.is_checked("#live") and page.is_disabled("#speak")
    page.click("#text")
    page.keyboard.type("Typed like tokens from a model", delay=5)
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.ttsDemo.stats.serverDone?.type === 'flushed'")
    page.wait_for_function("() => window.ttsDemo.stats.state === 'drained'")
    stats = page.evaluate("() => window.ttsDemo.stats")
    assert stats["segment"] == "Typed like tokens from a model"
    expected_s = stats["serverDone"]["audio_ms"] / 1000.0
    assert abs(stats["secondsPlayed"] - expected_s) <= 0.1 * expected_s
    assert stats["underruns"] == 0 and stats["ttfaMs"] > 0
    # a second turn on the same session: the pause between turns is not an underrun
    page.keyboard.type("Second turn.", delay=5)
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.ttsDemo.stats.segment === 'Second turn.'")
    page.wait_for_function("() => window.ttsDemo.stats.state === 'drained'")
    assert page.evaluate("() => window.ttsDemo.stats.underruns") == 0
    assert page_errors.messages == []


def test_player_building_blocks(page: Page, server_url: str) -> None:
    """The resampler has no seams at chunk boundaries; the ring counts underruns only mid-stream."""
    open_demo(page, server_url)
    result = page.evaluate(
        """async () => {
            const { LinearResampler } = await import("./player.js");
            const { PlaybackRing } = await import("./ring.js");
            // a 440 Hz tone at 24 kHz, resampled to 44.1 kHz whole and in odd-sized chunks
            const x = Float32Array.from({ length: 4800 }, (_, i) => Math.sin(2 * Math.PI * 440 * i / 24000));
            const whole = new LinearResampler(24000, 44100).process(x);
            const r = new LinearResampler(24000, 44100), parts = [];
            for (let i = 0; i < x.length; i += 333) parts.push(...r.process(x.subarray(i, i + 333)));
            let maxDiff = 0;
            for (let i = 0; i < whole.length; i++) maxDiff = Math.max(maxDiff, Math.abs(whole[i] - parts[i]));

            const ring = new PlaybackRing(48000, 10); // cushion = 480 samples
            const block = new Float32Array(128), log = [];
            ring.push(new Float32Array(300).fill(0.5));
            log.push(ring.render(block), ring.state);          // below the cushion: silence
            ring.push(new Float32Array(300).fill(0.5));
            log.push(ring.render(block), ring.state);          // 600 >= 480: plays
            for (let i = 0; i < 4; i++) ring.render(block);    // 600 - 5 * 128 < 0: runs dry
            log.push(ring.underruns, ring.state);              // one underrun, re-cushioning
            ring.push(new Float32Array(100).fill(0.5));
            ring.endOfStream();
            log.push(ring.render(block), ring.state, ring.underruns);  // eos: plays the rest, drained
            return { wholeLen: whole.length, partsLen: parts.length, maxDiff, log, played: ring.played };
        }"""
    )
    assert (
        result["partsLen"] == result["wholeLen"] == 4799 * 44100 // 24000 + 1
    )  # up to the last input sample
    assert result["maxDiff"] < 1e-6
    assert result["log"] == [0, "cushion", 128, "playing", 1, "cushion", 100, "drained", 1]
    assert result["played"] == 700
