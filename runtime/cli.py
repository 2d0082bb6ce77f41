"""The ``augury`` command line (click): ``info``, ``convert`` and the daemon commands.

click is used for every command (typed options, help texts, errors with a non-zero exit) so
that the interface is uniform; each command is a thin shell over library functions that the
tests call directly.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from augury.adapters.base import EventSource, open_source
from augury.events import EventFormatError


@dataclass(frozen=True)
class StreamInfo:
    """Summary of a finite source: counts, span (µs) and rates (events/s)."""

    uri: str
    format: str
    width: int
    height: int
    events: int
    dropped: int
    malformed: int
    t_first_us: int | None
    t_last_us: int | None
    mean_rate_hz: float
    peak_rate_hz: float
    peak_window_us: int

    @property
    def span_us(self) -> int:
        if self.t_first_us is None or self.t_last_us is None:
            return 0
        return self.t_last_us - self.t_first_us

    def to_text(self) -> str:
        span_ms = self.span_us / 1e3
        lines = [
            f"source     {self.uri}",
            f"format     {self.format}",
            f"geometry   {self.width}x{self.height}",
            f"events     {self.events:,}",
            f"span       {span_ms:.3f} ms"
            + (f" ({self.t_first_us} .. {self.t_last_us} µs)" if self.events else ""),
            f"mean rate  {self.mean_rate_hz / 1e6:.4f} Mev/s",
            f"peak rate  {self.peak_rate_hz / 1e6:.4f} Mev/s "
            f"(in {self.peak_window_us / 1e3:g} ms windows)",
            f"dropped    {self.dropped:,} (invalid events removed)",
            f"malformed  {self.malformed:,} (undecodable words/records skipped)",
        ]
        return "\n".join(lines)


def stream_info(source: EventSource, *, peak_window_us: int = 1000) -> StreamInfo:
    """Stream a finite source once and summarise it (memory bounded by one batch).

    mean rate = events / span; peak rate = max events in one ``peak_window_us`` window
    aligned to absolute time, divided by the window (events/s).
    """
    n = 0
    t_first: int | None = None
    t_last: int | None = None
    peak = 0
    carry_bin = -1
    carry_count = 0
    for batch in source.batches(batch_us=100 * peak_window_us):
        ev = batch.events
        if not ev.size:
            continue
        t = ev["t"]
        if t_first is None:
            t_first = int(t[0])
        t_last = int(t[-1])
        n += ev.size
        bins = t // peak_window_us
        uniq, counts = np.unique(bins, return_counts=True)
        if uniq[0] == carry_bin:  # a window split across batches
            counts[0] += carry_count
        peak = max(peak, int(counts.max()))
        carry_bin, carry_count = int(uniq[-1]), int(counts[-1])
    span = (t_last - t_first) if n else 0
    mean = n / (span / 1e6) if span > 0 else 0.0
    return StreamInfo(
        uri=source.uri, format=source.format, width=source.geometry.width,
        height=source.geometry.height, events=n, dropped=source.totals.dropped,
        malformed=source.totals.malformed, t_first_us=t_first, t_last_us=t_last,
        mean_rate_hz=mean, peak_rate_hz=peak / (peak_window_us / 1e6),
        peak_window_us=peak_window_us,
    )


_OUT_FORMATS = {".npy": "npz", ".npz": "npz", ".raw": "raw"}


def convert(src_uri: str, out: Path, *, raw_format: str = "evt3",
            max_events: int | None = None) -> int:
    """Convert any readable source to .npz/.npy (events + geometry) or EVT 2.0/3.0 .raw.

    Streams batch by batch for .raw output; returns the number of events written.
    """
    kind = _OUT_FORMATS.get(out.suffix.lower())
    if kind is None:
        raise click.UsageError(f"cannot write {out.suffix!r}: use one of "
                               f"{', '.join(sorted(_OUT_FORMATS))}")
    written = 0
    with open_source(src_uri) as source:
        if kind == "raw":
            from augury.adapters.evt_write import RawWriter

            with RawWriter(out, source.geometry, fmt=raw_format) as writer:
                for batch in source.batches():
                    ev = batch.events
                    if max_events is not None:
                        ev = ev[: max(0, max_events - written)]
                    writer.write(ev)
                    written += ev.size
                    if max_events is not None and written >= max_events:
                        break
        else:
            from augury.adapters.files import save_npy

            events = source.read_all()
            if max_events is not None:
                events = events[:max_events]
            save_npy(out, events, source.geometry)
            written = int(events.size)
    return written


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="augury")
def main() -> None:
    """Augury: learn online what an event camera will see next, and publish it."""


@main.command()
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--peak-window-us", default=1000, show_default=True, type=click.IntRange(1),
              help="Window for the peak rate (µs).")
def info(uri: str, as_json: bool, peak_window_us: int) -> None:
    """Format, geometry, event count, span, mean and peak rate of FILE or URI."""
    try:
        with open_source(uri) as source:
            summary = stream_info(source, peak_window_us=peak_window_us)
    except (FileNotFoundError, EventFormatError, ValueError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({**asdict(summary), "span_us": summary.span_us}))
    else:
        click.echo(summary.to_text())


@main.command(name="convert")
@click.argument("src")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "raw_format", type=click.Choice(["evt2", "evt3"]), default="evt3",
              show_default=True, help="Event format for .raw output.")
@click.option("--max-events", type=click.IntRange(0), default=None,
              help="Stop after this many events.")
def convert_cmd(src: str, out: Path, raw_format: str, max_events: int | None) -> None:
    """Convert SRC (any readable file or URI) to OUT (.npy/.npz or EVT 2.0/3.0 .raw)."""
    try:
        n = convert(src, out, raw_format=raw_format, max_events=max_events)
    except (FileNotFoundError, EventFormatError, ValueError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {n:,} events to {out}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
