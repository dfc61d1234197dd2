"""Configuration: TOML loading, rejection of unknown keys and wrong types, generated CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from chunker import ChunkerConfig
from engine.config import AudioConfig, EngineConfig
from stream_server.config import (
    SECTIONS,
    AppConfig,
    ServerConfig,
    add_config_flags,
    config_flags,
    load_config,
    overrides_from_args,
)
from stream_server.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "stream_server" / "data" / "example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return p


def test_no_file_no_overrides_gives_the_dataclass_defaults() -> None:
    assert load_config() == AppConfig(ServerConfig(), ChunkerConfig(), EngineConfig(), AudioConfig())


def test_toml_values_are_loaded_into_each_section(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\nport = 9000\nmax_ahead_s = 2\n[engine]\nengine = "espeak"\nnfe = 5\n'
                            '[chunker]\nmax_chars = 150\n[audio]\npause_ms = 80\n')
    cfg = load_config(path)
    assert (cfg.server.port, cfg.server.max_ahead_s) == (9000, 2.0)
    assert (cfg.engine.engine, cfg.engine.nfe) == ("espeak", 5)
    assert cfg.chunker.max_chars == 150
    assert cfg.audio.pause_ms == 80.0


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[server]\nport = 9000\n")
    assert load_config(path, {"server.port": 9100}).server.port == 9100


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[servr]\nport = 1\n", "servr"),
        ("[server]\nprot = 1\n", "prot"),
        ("[engine]\nnfe = 7\ncompile_mode = 1\n", "compile_mode"),
        ("[server]\nport = \"80\"\n", "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[engine]\nengine = \"gpu\"\n", "engine.engine"),
        ("[chunker]\nfast_start = 1\n", "chunker.fast_start"),
        ("[audio]\nopus_bitrate = 1.5\n", "audio.opus_bitrate"),
        ("server = 1\n", "[server] must be a table"),
        ("[server]\nport = 99999\n", "port"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_bad_files_are_rejected_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(_write(tmp_path, text))
    assert needle in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, {"server.nope": 1})


def test_every_field_has_exactly_one_long_flag_and_flags_are_unique() -> None:
    flags = [f for _, _, fs in config_flags() for f in fs]
    assert len(flags) == len(set(flags))
    n_fields = sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())
    assert len(config_flags()) == n_fields
    _parser()  # argparse itself raises on a duplicate option string


@pytest.mark.parametrize("flag", ["--port", "--engine", "--nfe", "--max-chars", "--opus-bitrate", "--host"])
def test_common_short_flags_exist(flag: str) -> None:
    assert flag in _parser()._option_string_actions


def test_unset_flags_do_not_override_anything() -> None:
    args = _parser().parse_args([])
    assert overrides_from_args(args) == {}
    assert load_config(None, overrides_from_args(args)) == AppConfig()


def test_flags_are_typed_and_land_in_their_section() -> None:
    args = _parser().parse_args(
        ["--port", "0", "--nfe", "5", "--no-fast-start", "--engine", "espeak", "--audio.pause-ms", "50",
         "--server.max-ahead-s", "1.5"]
    )
    cfg = load_config(None, overrides_from_args(args))
    assert cfg.server.port == 0 and cfg.engine.nfe == 5 and cfg.engine.engine == "espeak"
    assert cfg.chunker.fast_start is False
    assert cfg.audio.pause_ms == 50.0 and cfg.server.max_ahead_s == 1.5


def test_literal_flags_reject_unknown_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--engine", "gpu"])
    assert "invalid choice" in capsys.readouterr().err


def test_help_shows_the_dataclass_default() -> None:
    text = _parser().format_help()
    assert f"(default: {ServerConfig().port!r})" in text


def test_example_toml_loads_and_documents_every_key() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg == AppConfig()  # the example shows the defaults
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, name, _ in config_flags():
        assert f"\n{name} =" in text or f"\n# {name} =" in text, f"{section}.{name} missing from example.toml"
