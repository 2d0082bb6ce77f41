"""TOML configuration: defaults, overrides, errors naming the key, and the TOML round trip."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from augury.config import (
    Config,
    ConfigError,
    config_to_toml,
    load_config,
    parse_override,
)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "augury.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5556"
    assert cfg.control.endpoint == "tcp://127.0.0.1:5557"
    assert cfg.checkpoint.dir is None and cfg.control.curve_keys_dir is None


def test_file_values_and_dotted_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[source]
uri = "recordings/street.raw"
pace = "asap"
speed = 2          # an int is fine for a float
batch_us = 5000

[model]
k1 = 16
mix_taus_us = [100000, 400000]

[checkpoint]
dir = "/var/lib/augury"
every_s = 60
keep = 3

[log]
level = "debug"
""")
    cfg = load_config(path, {"publish.endpoint": "tcp://0.0.0.0:6000", "model.q": 1e-6,
                             "pipeline.overflow": "block",
                             "publish.isolate_slow_subscribers": True})
    assert cfg.source.uri == "recordings/street.raw" and cfg.source.pace == "asap"
    assert cfg.source.speed == 2.0 and isinstance(cfg.source.speed, float)
    assert cfg.source.batch_us == 5000
    assert cfg.model == {"k1": 16, "mix_taus_us": [100000, 400000], "q": 1e-6}
    assert (cfg.checkpoint.dir, cfg.checkpoint.every_s, cfg.checkpoint.keep) == (
        "/var/lib/augury", 60.0, 3)
    assert cfg.log.level == "DEBUG"
    assert cfg.publish.endpoint == "tcp://0.0.0.0:6000" and cfg.publish.hwm == 100
    assert cfg.pipeline.overflow == "block" and cfg.publish.isolate_slow_subscribers is True


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"checkpoint.every_s": 0}, r"checkpoint\.every_s: got 0; allowed: a number > 0"),
        ({"checkpoint.every_s": "often"}, r"checkpoint\.every_s: got 'often' \(str\)"),
        ({"checkpoint.keep": 0}, r"checkpoint\.keep: got 0; allowed: an integer >= 1"),
        ({"checkpoint.keep": 2.5}, r"checkpoint\.keep: got 2\.5 \(float\)"),
        ({"publish.hwm": True}, r"publish\.hwm: got True \(bool\)"),
        ({"publish.isolate_slow_subscribers": "yes"},
         r"publish\.isolate_slow_subscribers: got 'yes' \(str\); allowed: true or false"),
        ({"publish.rate_ms": float("nan")}, r"publish\.rate_ms: got nan"),
        ({"source.pace": "fast"}, r"source\.pace: got 'fast'; allowed: one of 'asap', 'realtime'"),
        ({"source.speed": -1}, r"source\.speed: got -1; allowed: a number > 0"),
        ({"pipeline.overflow": "drop_newest"},
         r"pipeline\.overflow: .*one of 'auto', 'drop_oldest', 'block'"),
        ({"log.level": "LOUD"}, r"log\.level: got 'LOUD'; allowed: one of 'DEBUG'"),
        ({"publish.endpoint": "localhost:5556"}, r"publish\.endpoint: .*ZeroMQ endpoint"),
        ({"publish.endpont": "tcp://127.0.0.1:1"},
         r"publish\.endpont: unknown key \(did you mean 'publish\.endpoint'\?\)"),
        ({"checkpoint.every": 5}, r"did you mean 'checkpoint\.every_s'\?"),
        ({"publsh.hwm": 5}, r"publsh\.hwm: unknown section \(did you mean 'publish'\?\)"),
        ({"publish": 5}, r"publish: an override key is 'section\.key'"),
        ({"publish.hwm.x": 5}, r"publish\.hwm\.x: an override key is 'section\.key'"),
    ],
)
def test_each_error_names_the_key_and_what_is_allowed(overrides, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


def test_errors_from_a_file_name_the_file_and_all_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[publish]
hwm = 0
[checkpoint]
every_s = -5
[sourse]
uri = "x"
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(str(path))
    assert len(info.value.problems) == 3
    assert "publish.hwm" in text and "checkpoint.every_s" in text
    assert "sourse: unknown section (did you mean 'source'?)" in text


@pytest.mark.parametrize(
    ("text", "pattern"),
    [("[publish\nhwm = 1", "invalid TOML"),
     ("publish = 3", r"publish: must be a table \(\[publish\]\), got int"),
     ("model = [1]", r"model: must be a table")],
)
def test_malformed_files(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(_write(tmp_path, text))


def test_control_channel_can_be_disabled() -> None:
    assert load_config(None, {"control.endpoint": "none"}).control.endpoint == "none"
    with pytest.raises(ConfigError, match=r"publish\.endpoint: got 'none'"):
        load_config(None, {"publish.endpoint": "none"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("publish.hwm=10", ("publish.hwm", 10)),
     ("source.speed = 2.5", ("source.speed", 2.5)),
     ("source.pace=asap", ("source.pace", "asap")),
     ("source.uri=udp://0.0.0.0:3333", ("source.uri", "udp://0.0.0.0:3333")),
     ('source.uri="a b"', ("source.uri", "a b")),
     ("model.layers=[8, 4]", ("model.layers", [8, 4])),
     ("model.learn=true", ("model.learn", True))],
)
def test_parse_override(text: str, expected) -> None:
    assert parse_override(text) == expected


def test_parse_override_needs_an_equals_sign() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("publish.hwm")


_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
# [model] is validated at load (issue 10, defect 8): any valid subset of ModelSpec keys
_model = st.fixed_dictionaries({}, optional={
    "k1": st.integers(1, 256), "pool": st.sampled_from([0, 1, 2, 4, 8]),
    "settle": st.floats(0.0, 10.0), "kappa": st.floats(1e-3, 1.0),
    "seed": st.integers(0, 2**63 - 1), "fixed_point": st.booleans(),
    "mix_taus_us": st.lists(st.integers(1, 10**9), max_size=8),
})


@settings(max_examples=60, deadline=None)
@given(model=_model, uri=st.text(min_size=1, max_size=20).filter(lambda s: not s[0].isspace()),
       speed=st.floats(min_value=1e-3, max_value=1e6), keep=st.integers(1, 100))
def test_toml_round_trip(tmp_path_factory, model, uri, speed, keep) -> None:
    cfg = load_config(None, {"source.uri": uri, "source.speed": speed, "checkpoint.keep": keep,
                             "checkpoint.dir": "/tmp/ck dir"})
    cfg = dataclasses.replace(cfg, model=model)
    path = tmp_path_factory.mktemp("cfg") / "out.toml"
    path.write_text(config_to_toml(cfg), encoding="utf-8")
    again = load_config(path)
    assert again == cfg


def test_toml_output_is_readable() -> None:
    text = config_to_toml(load_config(None, {"model.k1": 16, "publish.rate_ms": 20,
                                             "model.mix_taus_us": [1000, 2000]}))
    assert "[publish]\nendpoint = \"tcp://127.0.0.1:5556\"\nrate_ms = 20.0\n" in text
    assert "# dir = (unset)" in text
    assert "[model]\nk1 = 16\nmix_taus_us = [\n    1000,\n    2000,\n]\n" in text


# -- issue 10, defect 8: [model] validated at load -----------------------------------------------


@pytest.mark.parametrize(("text", "pattern"), [
    ('pool = "eight"', r"model\.pool must be an int, got 'eight'"),
    ("k1 = 0", r"model\.k1=0 is outside 1\.\.256"),
    ("pi_max = inf", r"model\.pi_max must be a finite number, got inf"),
    ("kk1 = 3", r"model\.kk1: unknown key \(did you mean 'model\.k1'\?\)"),
    ("[model.learning]\neta = 0.01", r"model\.learning: unknown key"),
    ("learn_us = 1500", r"model\.learn_us=1500 must be a multiple of tick_us=1000"),
])
def test_model_errors_at_load_name_the_key_and_file(tmp_path: Path, text: str,
                                                    pattern: str) -> None:
    """Defect 8: `model.pool = "eight"` and `model.k1 = 0` loaded (and --print-config exited
    0); they failed only at run time, naming neither `model.` nor the file."""
    path = _write(tmp_path, "[model]\n" + text + "\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {pattern}"):
        load_config(path)


@pytest.mark.parametrize(("override", "pattern"), [
    ('model.pool="eight"', r"model\.pool must be an int"),
    ("model.k1=0", r"model\.k1=0 is outside"),
    ("model.a.b=1", r"model\.a: unknown key"),
])
def test_model_overrides_validated_too(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, dict([parse_override(override)]))


def test_print_config_refuses_a_bad_model(tmp_path: Path) -> None:
    """Defect 8, through the CLI: `augury run --print-config` exits 1 naming model.KEY and
    the file, instead of printing the config and exiting 0."""
    from click.testing import CliRunner

    from augury.cli import main

    path = _write(tmp_path, '[model]\npool = "eight"\nk1 = 16\n')
    res = CliRunner().invoke(main, ["run", "--config", str(path), "--print-config"])
    assert res.exit_code == 1, res.output
    assert f"{path}: model.pool must be an int" in res.output
    res = CliRunner().invoke(main, ["run", "--print-config", "--set", "model.k1=0"])
    assert res.exit_code == 1 and "model.k1=0 is outside 1..256" in res.output
    res = CliRunner().invoke(main, ["run", "--print-config", "--set", "model.k1=16"])
    assert res.exit_code == 0 and "k1 = 16" in res.output
