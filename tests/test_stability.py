"""tools/experiments/stability in its --quick form: the default sits inside a stable region
spanning 4× in the precision learning rate α and in the weight drift q (issue 13)."""

from __future__ import annotations

import json

import pytest

from tools.experiments import stability as sb

pytestmark = pytest.mark.skipif(not sb.RECORDINGS["rotdisk"].exists(),
                                reason="shared data directory ../shared/data is absent")


def test_default_is_inside_a_stable_region(capsys: pytest.CaptureFixture[str]) -> None:
    sb.main(["--quick"])
    head = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert head["default"] == "stable"
    assert head["stable_width_alpha"] >= 4.0 and head["stable_width_q"] >= 4.0, head


def test_classification() -> None:
    assert sb.classify([4.0, 2.0, 1.0], [1.0, 1.0, 1.0], 5.0, True) == "stable"
    assert sb.classify([4.0, 4.0, 3.0], [1.0, 1.0, 1.0], 5.0, True) == "oscillating"
    assert sb.classify([4.0, 2.0, 1.0], [1.0, 1.0, 20.0], 5.0, True) == "divergent"
    assert sb.classify([4.0, 2.0, 1.0], [1.0, 1.0, 1.0], 5.0, False) == "divergent"
    assert sb.classify([4.0, 2.0, 1.0], [1.0, 1.0, 1.0], 1e4, True) == "divergent"


def test_stable_width() -> None:
    labels = ["divergent", "stable", "stable", "stable", "oscillating"]
    assert sb.stable_width([1, 2, 4, 8, 16], labels, 4) == 4.0
    assert sb.stable_width([1, 2, 4, 8, 16], labels, 16) == 0.0


def test_long_run_with_noise_stays_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    """--long in miniature (6 loops, 2.4 M events with 5 % fresh noise per loop): finite,
    weights inside their bounds, weight change shrinking, spike rate not blowing up."""
    sb.main(["--long", "2e6"])
    head = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert head["class"] == "stable" and head["finite"]
    assert head["w_max"] <= 4.0
    assert head["dw_first_last"][1] < 0.5 * head["dw_first_last"][0]
    assert head["spikes_per_event_second_half"][1] < 2 * head["spikes_per_event_first"]


def test_noisy_loop_adds_fresh_noise_inside_the_loop() -> None:
    import numpy as np

    base = np.zeros(1000, dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    base["t"] = np.arange(1000) * 10
    rng = np.random.default_rng(0)
    a = sb.noisy_loop(base, 32, 24, 3, 10_000, rng)
    b = sb.noisy_loop(base, 32, 24, 3, 10_000, rng)
    assert a.size == 1050 and np.all(np.diff(a["t"]) >= 0)
    assert a["t"].min() >= 30_000 and a["t"].max() < 40_000
    assert a["x"].max() < 32 and a["y"].max() < 24
    assert not np.array_equal(a, b)  # every loop draws its own noise


def test_combine_takes_the_worst_seed() -> None:
    def run(label: str, dw: float, w: float) -> sb.Run:
        return sb.Run(label, [4.0, dw], [1.0, 1.0], w, (0.1, 10.0), 2.0, True)

    c = sb.combine([run("stable", 1.0, 3.0), run("oscillating", 3.0, 3.5),
                    run("stable", 2.0, 3.2)])
    assert (c.label, c.seeds, c.seeds_worst) == ("oscillating", 3, 1)
    assert c.dw == [2.0] and c.w_max == 3.5
    assert sb.combine([run("stable", 1.0, 3.0)] * 2).label == "stable"
