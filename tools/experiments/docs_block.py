"""Writing an experiment's table into docs/results.md between its ``<!-- name:begin -->`` and
``<!-- name:end -->`` markers (appended under ``heading`` the first time)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"


def write_block(name: str, heading: str, text: str, command: str,
                figure: str | None = None, path: Path = RESULTS) -> None:
    """Replace the block ``name`` of ``path`` by the command, ``text`` and, if given, the
    figure (a path relative to docs/, e.g. ``figures/x.png``)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    fig = f"\n\n![{name}]({figure})" if figure else ""
    block = f"{begin}\nCommand: `{command}`\n\n{text}{fig}\n{end}"
    doc = path.read_text()
    if begin in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc += f"\n## {heading}\n\n{block}\n"
    path.write_text(doc)
