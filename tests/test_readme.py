"""The README's Python examples run as written (so they cannot drift from the code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, shared_data: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)  # the examples use ../shared/data relative to the repo
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    for expected in re.findall(r"#\s+(\S.*)$", code, re.M):
        if expected.split()[0].replace(".", "").isdigit() or expected.startswith("EVT"):
            assert expected.strip() in out, (expected, out)
