"""Decode throughput: augury's EVT decoder vs expelliarmus and faery, same files, same run.

Usage::

    python -m tools.bench.decode [--quick] [--repeats N] [--write-docs]

Every reader decodes the whole file from disk (page cache warm after a first untimed run);
the figure is events / best wall time over the repeats (Mev/s). Ratios are augury's rate
divided by the other reader's rate in this same process, so machine noise mostly cancels.
Correctness is checked on the way: augury's events must equal the reference (EVT 3.0) or
expelliarmus's (EVT 2.0, DAT) output, else the script exits non-zero.
The last output line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prophesee"
DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    encoding: str  # expelliarmus encoding: evt3 | evt2 | dat


CASES = (
    Case("evt3_sample", DATA / "evt3_sample.raw", "evt3"),
    Case("pedestrians_evt3_small", DATA / "pedestrians_evt3_small.raw", "evt3"),
    Case("evt2_sample", DATA / "evt2_sample.raw", "evt2"),
    Case("NCARS_obj_004397_td", DATA / "NCARS_obj_004397_td.dat", "dat"),
)


def _best_times(fns: dict[str, Callable[[], int]], repeats: int) -> dict[str, tuple[float, int]]:
    """Each fn once untimed (warm-up, numba compile, page cache), then `repeats` rounds in
    which every fn runs once in turn (interleaved, so load changes hit all readers alike);
    returns the best wall time and the event count of each."""
    counts = {name: fn() for name, fn in fns.items()}
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            counts[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (best[name], counts[name]) for name in fns}


def _augury(case: Case) -> Callable[[], int]:
    if case.encoding == "dat":
        from augury.adapters.files import open_file

        return lambda: int(open_file(case.path).read_all().size)
    from augury.adapters.evt import decode_raw_file

    return lambda: int(decode_raw_file(case.path)[1].size)


def _expelliarmus(case: Case) -> Callable[[], int]:
    from expelliarmus import Wizard

    return lambda: int(Wizard(encoding=case.encoding, fpath=case.path).read().size)


def _faery(case: Case) -> Callable[[], int]:
    import faery

    def run() -> int:  # one array at the end, as the other two readers return
        stream = faery.events_stream_from_file(case.path)
        return int(np.concatenate(list(stream)).size)

    return run


def _check(case: Case) -> str:
    """Compare augury's decode with the trusted one; returns 'exact' or raises."""
    from augury.events import to_events

    if case.encoding == "dat":
        from augury.adapters.files import open_file

        ours = open_file(case.path).read_all()
    else:
        from augury.adapters.evt import decode_raw_file

        ours = decode_raw_file(case.path)[1]
    ref_path = case.path.with_suffix(".reference.npy")
    if case.encoding == "evt3":
        theirs = to_events(np.load(ref_path))
    else:
        from expelliarmus import Wizard

        theirs = to_events(Wizard(encoding=case.encoding, fpath=case.path).read())
    for f in ("t", "x", "y", "p"):
        if not np.array_equal(ours[f], theirs[f]):
            raise SystemExit(f"{case.name}: augury's decode differs from the oracle in {f}")
    return "exact"


def run(repeats: int, quick: bool) -> dict[str, object]:
    rows = []
    readers = {"augury": _augury, "expelliarmus": _expelliarmus, "faery": _faery}
    cases = CASES[:3] if quick else CASES
    for case in cases:
        check = _check(case)
        row: dict[str, object] = {"file": case.name, "format": case.encoding, "check": check,
                                  "faery": None}  # faery 0.7.1 rejects the old DAT "2d" type
        fns = {name: make(case) for name, make in readers.items()
               if not (name == "faery" and case.encoding == "dat")}
        for name, (secs, n) in _best_times(fns, repeats).items():
            row[name] = n / secs / 1e6
            row["events"] = n
        rows.append(row)
    for row in rows:
        for other in ("expelliarmus", "faery"):
            if row.get(other):
                row[f"ratio_vs_{other}"] = row["augury"] / row[other]  # type: ignore[operator]
    by = {r["file"]: r for r in rows}
    summary = {
        "evt3_mev_s": round(by["evt3_sample"]["augury"], 2),  # type: ignore[arg-type]
        "evt3_ratio_vs_expelliarmus": round(by["evt3_sample"]["ratio_vs_expelliarmus"], 3),  # type: ignore[arg-type]
        "evt3_ratio_vs_faery": round(by["evt3_sample"]["ratio_vs_faery"], 3),  # type: ignore[arg-type]
        "evt2_mev_s": round(by["evt2_sample"]["augury"], 2),  # type: ignore[arg-type]
        "evt2_ratio_vs_expelliarmus": round(by["evt2_sample"]["ratio_vs_expelliarmus"], 3),  # type: ignore[arg-type]
        "evt2_ratio_vs_faery": round(by["evt2_sample"]["ratio_vs_faery"], 3),  # type: ignore[arg-type]
        "repeats": repeats,
        "quick": quick,
    }
    return {"rows": rows, "summary": summary}


def table(rows: list[dict[str, object]]) -> str:
    def f(v: object) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = [
        "| file | format | events | augury Mev/s | expelliarmus Mev/s | faery Mev/s "
        "| augury/expelliarmus | augury/faery | correctness |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['format']} | {r['events']:,} | {f(r['augury'])} "
            f"| {f(r['expelliarmus'])} | {f(r.get('faery'))} "
            f"| {f(r.get('ratio_vs_expelliarmus'))} | {f(r.get('ratio_vs_faery'))} "
            f"| {r['check']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three files, 3 repeats (< 1 min)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the decode section of docs/performance.md with this run")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    result = run(repeats, args.quick)
    text = table(result["rows"])  # type: ignore[arg-type]
    print(text)
    if args.write_docs:
        write_docs(text, result["summary"])  # type: ignore[arg-type]
    print(json.dumps(result["summary"]))


def write_docs(text: str, summary: dict[str, object]) -> None:
    """Replace the block between the decode markers in docs/performance.md."""
    begin, end = "<!-- decode:begin -->", "<!-- decode:end -->"
    cmd = "python -m tools.bench.decode --write-docs"
    block = (f"{begin}\nCommand: `{cmd}` ({platform.python_version()}, "
             f"{platform.machine()}, best of {summary['repeats']} after one warm-up run).\n\n"
             f"{text}\n\nHeadline: `{json.dumps(summary)}`\n{end}")
    doc = DOC.read_text() if DOC.exists() else "# Performance\n"
    if begin in doc and end in doc:
        head, _, rest = doc.partition(begin)
        _, _, tail = rest.partition(end)
        doc = head + block + tail
    else:
        doc = doc.rstrip() + "\n\n## Decoding\n\n" + block + "\n"
    DOC.write_text(doc)


if __name__ == "__main__":
    main()
