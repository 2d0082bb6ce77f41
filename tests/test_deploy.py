"""The deployment files stay in step with the code: the example config loads and builds a
model, and the options the systemd unit and the Dockerfile pass to `augury run` exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from augury.adapters import open_source
from augury.cli import main
from augury.config import load_config
from augury.daemon import model_spec

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_config_loads_and_builds_a_model_spec(tmp_path: Path) -> None:
    cfg = load_config(DEPLOY / "augury.toml", {"checkpoint.dir": str(tmp_path)})
    with open_source("synthetic://bars?duration_us=1000&width=64&height=48") as src:
        spec = model_spec(cfg, src)
    assert (spec.width, spec.height) == (64, 48)
    from augury.model.spec import default_pool

    pool = cfg.model["pool"] or default_pool(spec.width, spec.height)
    assert spec.pool == pool and spec.k1 == cfg.model["k1"]


def test_example_config_is_the_defaults_with_examples_commented_out() -> None:
    """Issue 10, defect 8: the example had ``dir = "/var/lib/augury"`` active, so copying
    it anywhere (or ``--config deploy/augury.toml`` in a test) wrote checkpoints there.
    Loaded as is, it must equal the built-in defaults, and every "example" line is a
    comment."""
    example = load_config(DEPLOY / "augury.toml", {})
    default = load_config(None, {})
    assert example.checkpoint.dir is None
    for section in ("source", "publish", "control", "checkpoint", "pipeline", "log"):
        assert getattr(example, section) == getattr(default, section), section
    with open_source("synthetic://bars?duration_us=1000&width=64&height=48") as src:
        assert model_spec(example, src) == model_spec(default, src)
    text = (DEPLOY / "augury.toml").read_text()
    active = [line for line in text.splitlines()
              if "example" in line.lower() and not line.lstrip().startswith("#")]
    assert not active, active


def _run_options() -> set[str]:
    res = CliRunner().invoke(main, ["run", "--help"])
    assert res.exit_code == 0
    return set(re.findall(r"--[a-z][a-z-]+", res.output))


def test_systemd_unit_and_dockerfile_use_existing_run_options() -> None:
    known = _run_options()
    unit = (DEPLOY / "augury.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    args = shlex.split(exec_start.partition("=")[2])
    assert args[1] == "run"
    used = {a for a in args if a.startswith("--")}
    docker = (DEPLOY / "Dockerfile").read_text()
    used |= set(re.findall(r'"(--[a-z][a-z-]+)"', docker))
    assert used and used <= known, used - known
