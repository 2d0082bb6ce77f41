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
