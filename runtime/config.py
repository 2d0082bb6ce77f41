"""Typed daemon configuration loaded from TOML, validated with errors that name the key.

Sections and keys (defaults in the dataclasses below)::

    [source]     uri, pace ("asap" | "realtime"), speed (> 0, × real time), batch_us (µs)
    [model]      keys of ``augury.model.spec.ModelSpec``, validated at load (errors name
                 ``model.KEY`` and the file); width/height come from the source
    [publish]    endpoint (ZeroMQ), rate_ms (ms between read-outs), hwm (messages),
                 isolate_slow_subscribers (bool, default true; see augury.publish and
                 docs/protocol.md), dictionary_s (s of wall time between two
                 ``dictionary`` messages, the layer-1 weights; 0: never)
    [control]    endpoint (ZeroMQ, or "none": no control channel), curve_keys_dir (unset: no
                 CURVE; else server keys there, created on first start)
    [checkpoint] dir (unset: no checkpoints), every_s (s), keep (files)
    [pipeline]   queue_size (batches), overflow ("auto" | "drop_oldest" | "block"; auto =
                 drop_oldest for live sources, block for recordings)
    [log]        level ("DEBUG" | "INFO" | "WARNING" | "ERROR" | "CRITICAL")

``load_config(path, overrides)`` reads the file (or only defaults when ``path`` is None),
applies dotted-key overrides (``{"publish.endpoint": "tcp://0.0.0.0:5556"}``) and validates
everything; every problem is reported in one ConfigError naming the key and what is allowed,
with a did-you-mean suggestion for unknown keys. ``config_to_toml`` writes a Config back as
TOML that loads to an equal Config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

import tomli_w


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` lists one "key: what is wrong" line per error."""

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        where = f"{source}: " if source else ""
        lines = "\n  ".join(problems)
        text = f"{where}{lines}" if len(problems) == 1 else f"{where}invalid config:\n  {lines}"
        super().__init__(text)
        self.problems = problems


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class _Rule:
    """Type and range of one config value; ``describe`` is the "allowed" text of errors."""

    kind: type
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    unit: str = ""
    nullable: bool = False
    pattern: str | None = None
    what: str = ""

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = self.what or "a string"
        else:
            noun = "an integer" if self.kind is int else "a number"
            parts = []
            if self.lo is not None:
                parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
            if self.hi is not None:
                parts.append(f"<= {_num(self.hi)}")
            text = noun + (" " + " and ".join(parts) if parts else "")
            if self.unit:
                text += f" ({self.unit})"
        return text + (" (or leave it unset)" if self.nullable else "")

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(normalised value, None) or (value, problem text)."""
        if value is None and self.nullable:
            return None, None
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            normalised, problem = self.check(float(value))
            return normalised, problem and f"got {value!r}"
        if self.kind is not bool and isinstance(value, bool) or not isinstance(value, self.kind):
            return value, f"got {value!r} ({type(value).__name__})"
        if self.choices:
            norm = value.upper() if self.choices[0].isupper() else value
            return (norm, None) if norm in self.choices else (value, f"got {value!r}")
        if self.kind is str and self.pattern and not re.fullmatch(self.pattern, value, re.S):
            return value, f"got {value!r}"
        if self.kind in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                return value, f"got {value!r}"
            too_low = self.lo is not None and (value <= self.lo if self.lo_open
                                               else value < self.lo)
            too_high = self.hi is not None and value > self.hi
            if too_low or too_high:
                return value, f"got {value!r}"
        return value, None


def _f(default: Any, rule: _Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


_ENDPOINT = _Rule(str, pattern=r"^(tcp://[^\s]+:(\d+|\*)|ipc://\S+|inproc://\S+)$",
                  what="a ZeroMQ endpoint such as 'tcp://127.0.0.1:5556' or 'ipc:///run/x'")
_CONTROL_ENDPOINT = _Rule(
    str, pattern=r"^((?i:none)|tcp://[^\s]+:(\d+|\*)|ipc://\S+|inproc://\S+)$",
    what="a ZeroMQ endpoint such as 'tcp://127.0.0.1:5557', or 'none' (no control channel)")
_PATH = _Rule(str, nullable=True, pattern=r"\S.*", what="a directory path")


@dataclass(frozen=True)
class SourceConfig:
    """Where events come from and how fast they are replayed."""

    uri: str = _f("synthetic://bars?duration_us=none",  # endless scene: a daemon runs on
                  _Rule(str, pattern=r"\S.*", what="a non-empty source URI"))
    pace: str = _f("realtime", _Rule(str, choices=("asap", "realtime")))
    speed: float = _f(1.0, _Rule(float, lo=0.0, lo_open=True, hi=1e6, unit="× real time"))
    batch_us: int = _f(10_000, _Rule(int, lo=1, hi=10_000_000, unit="µs"))


@dataclass(frozen=True)
class PublishConfig:
    """ZeroMQ PUB of read-outs (schema v2)."""

    endpoint: str = _f("tcp://127.0.0.1:5556", _ENDPOINT)
    rate_ms: float = _f(50.0, _Rule(float, lo=0.0, lo_open=True, hi=3_600_000, unit="ms"))
    hwm: int = _f(100, _Rule(int, lo=1, hi=1_000_000, unit="messages"))
    isolate_slow_subscribers: bool = _f(True, _Rule(bool))
    dictionary_s: float = _f(5.0, _Rule(float, lo=0.0, hi=86_400, unit="s of wall time; 0: off"))


@dataclass(frozen=True)
class ControlConfig:
    """ZeroMQ ROUTER control channel (clients use REQ)."""

    endpoint: str = _f("tcp://127.0.0.1:5557", _CONTROL_ENDPOINT)
    curve_keys_dir: str | None = _f(None, _PATH)


@dataclass(frozen=True)
class CheckpointConfig:
    """Periodic atomic checkpoints; no ``dir`` means no checkpoints."""

    dir: str | None = _f(None, _PATH)
    every_s: float = _f(300.0, _Rule(float, lo=0.0, lo_open=True, hi=31_536_000, unit="s"))
    keep: int = _f(5, _Rule(int, lo=1, hi=100_000, unit="files"))


@dataclass(frozen=True)
class PipelineConfig:
    """Bounded queue between the reader thread and the engine."""

    queue_size: int = _f(64, _Rule(int, lo=1, hi=1_000_000, unit="batches"))
    overflow: str = _f("auto", _Rule(str, choices=("auto", "drop_oldest", "block")))


@dataclass(frozen=True)
class LogConfig:
    """Logging."""

    level: str = _f("INFO", _Rule(str, choices=("DEBUG", "INFO", "WARNING", "ERROR",
                                                 "CRITICAL")))


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration. ``model`` holds ModelSpec keys, checked at load."""

    source: SourceConfig = field(default_factory=SourceConfig)
    model: dict[str, Any] = field(default_factory=dict)
    publish: PublishConfig = field(default_factory=PublishConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    log: LogConfig = field(default_factory=LogConfig)


_SECTIONS: dict[str, type] = {
    "source": SourceConfig,
    "publish": PublishConfig,
    "control": ControlConfig,
    "checkpoint": CheckpointConfig,
    "pipeline": PipelineConfig,
    "log": LogConfig,
}
_SECTION_ORDER = ("source", "model", "publish", "control", "checkpoint", "pipeline", "log")


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(key: str, word: str, options: list[str], prefix: str = "") -> str:
    opts = [prefix + o for o in options]
    what = "key" if prefix else "section"
    return (f"{key}: unknown {what}{_did_you_mean(prefix + word, opts)}; "
            f"allowed: {', '.join(opts)}")


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any],
                     problems: list[str]) -> None:
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        section = parts[0]
        if section not in _SECTION_ORDER:
            problems.append(_unknown(dotted, section, list(_SECTION_ORDER)))
            continue
        if len(parts) < 2 or not all(parts) or (section != "model" and len(parts) != 2):
            problems.append(f"{dotted}: an override key is 'section.key' (or 'model.a.b')")
            continue
        table = raw.setdefault(section, {})
        for part in parts[1:-1]:
            if not isinstance(table, dict):
                break
            table = table.setdefault(part, {})
        if not isinstance(table, dict):
            problems.append(f"{dotted}: cannot set a key inside a non-table value")
            continue
        table[parts[-1]] = value


def _build_section(name: str, cls: type, table: Any, problems: list[str]) -> Any:
    if not isinstance(table, dict):
        problems.append(f"{name}: must be a table ([{name}]), got {type(table).__name__}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            problems.append(_unknown(f"{name}.{key}", key, list(fields), prefix=f"{name}."))
            continue
        rule: _Rule = fields[key].metadata["rule"]
        norm, problem = rule.check(value)
        if problem:
            problems.append(f"{name}.{key}: {problem}; allowed: {rule.describe()}")
        else:
            values[key] = norm
    return cls(**values)


MODEL_CHECK_GEOMETRY = {"width": 640, "height": 480}
"""Stand-in sensor used to validate ``[model]`` at load: the daemon takes the real width and
height from the source (``[model]`` width/height are ignored), and no other check of
ModelSpec depends on them."""


def _model_problems(table: dict[str, Any]) -> list[str]:
    """Problems of a ``[model]`` table, each naming ``model.KEY``; [] if ModelSpec accepts it.

    Unknown keys (nested tables included) are listed one per line with a suggestion; the
    known ones are then built into a ModelSpec (on MODEL_CHECK_GEOMETRY) so that a wrong
    type or a value out of range fails at load instead of at run time.
    """
    from augury.model.spec import ModelSpec  # lazily: the config loads without the model

    known = [f.name for f in dataclasses.fields(ModelSpec) if f.name not in ("width", "height")]
    problems = [_unknown(f"model.{key}", str(key), known, prefix="model.")
                for key in table if key not in known and key not in ("width", "height")]
    if problems:
        return problems
    try:
        ModelSpec.from_dict({**{k: v for k, v in table.items() if k in known},
                             **MODEL_CHECK_GEOMETRY})
    except (ValueError, TypeError) as exc:
        text = str(exc).replace("ModelSpec.", "model.").replace("ModelSpec:", "model:")
        key = next((k for k in table if f"model.{k}" in text), None)
        return [text if key is not None else f"model: {text}"]
    return []


def config_from_dict(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                     *, source: str = "") -> Config:
    """Validate a parsed TOML document (plus dotted overrides) into a Config."""
    problems: list[str] = []
    data = _deep_copy(raw)
    _apply_overrides(data, overrides or {}, problems)
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name == "model":
            if isinstance(table, dict):
                problems.extend(_model_problems(table))
                sections["model"] = table
            else:
                problems.append(f"model: must be a table ([model]), got {type(table).__name__}")
        elif name in _SECTIONS:
            sections[name] = _build_section(name, _SECTIONS[name], table, problems)
        else:
            problems.append(_unknown(name, name, list(_SECTION_ORDER)))
    if problems:
        raise ConfigError(problems, source=source)
    return Config(**sections)


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load ``path`` (TOML; None: defaults only), apply dotted ``overrides``, validate.

    Raises ConfigError naming the file and every offending key with what is allowed.
    """
    raw: dict[str, Any] = {}
    source = "" if path is None else str(path)
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError as exc:
            raise ConfigError(["config file not found"], source=source) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"invalid TOML: {exc}"], source=source) from exc
        except OSError as exc:
            raise ConfigError([f"cannot read: {exc}"], source=source) from exc
    return config_from_dict(raw, overrides, source=source)


def parse_override(text: str) -> tuple[str, Any]:
    """Split a command-line override ``key=value``; the value is read as a TOML value when it
    is one (``10``, ``2.5``, ``true``, ``"x"``, ``[1, 2]``) and kept as a string otherwise."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"override {text!r}: expected key=value, e.g. publish.hwm=10"])
    value = value.strip()
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


def config_to_toml(cfg: Config) -> str:
    """TOML text of ``cfg`` (unset values as comments) that ``load_config`` reads back equal.

    Written by tomli-w (the standard writer for what tomllib reads), section by section so
    that unset keys can be shown as comments.
    """
    parts: list[str] = []
    for name in _SECTION_ORDER:
        if name == "model":
            parts.append(tomli_w.dumps({"model": cfg.model}))
            continue
        values = {f.name: getattr(getattr(cfg, name), f.name)
                  for f in dataclasses.fields(getattr(cfg, name))}
        body = tomli_w.dumps({name: {k: v for k, v in values.items() if v is not None}})
        parts.append(body + "".join(f"# {k} = (unset)\n" for k, v in values.items()
                                    if v is None))
    return "\n".join(parts)


def write_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write ``config_to_toml(cfg)`` to ``path``; returns the path."""
    p = Path(path)
    p.write_text(config_to_toml(cfg), encoding="utf-8")
    return p


__all__ = ["CheckpointConfig", "Config", "ConfigError", "ControlConfig", "LogConfig",
           "PipelineConfig", "PublishConfig", "SourceConfig", "config_from_dict",
           "config_to_toml", "load_config", "parse_override", "write_config"]
