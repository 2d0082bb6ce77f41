"""The ``augury`` command line (click): ``info``, ``convert`` and the daemon commands.

click is used for every command (typed options, help texts, errors with a non-zero exit) so
that the interface is uniform; each command is a thin shell over library functions that the
tests call directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from augury.adapters.base import EventSource, open_source, parse_uri
from augury.events import EventFormatError

if TYPE_CHECKING:
    from augury.client import Message


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
    except OSError as exc:  # a missing file, a directory, no permission: name the path
        where = exc.filename if exc.filename is not None else uri
        raise click.ClickException(f"{where}: {exc.strerror or exc}") from exc
    except (EventFormatError, ValueError, TypeError, ImportError) as exc:
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



def record(src_uri: str, out: Path, *, raw_format: str = "evt3",
           duration_us: int | None = None, max_bytes: int | None = None,
           stop: Callable[[], bool] = lambda: False) -> tuple[int, int]:
    """Record any source to an EVT 2.0/3.0 .raw file, stopping at the source's end, after
    ``duration_us`` of sensor time, once the file exceeds ``max_bytes``, or when ``stop()``.

    Returns (events written, bytes written). The file is always closed with a valid header.
    """
    from augury.adapters.evt_write import RawWriter

    n = 0
    with open_source(src_uri) as source, RawWriter(out, source.geometry, fmt=raw_format) as w:
        t_first: int | None = None
        for batch in source.batches(batch_us=1000):
            ev = batch.events
            if t_first is None and ev.size:
                t_first = int(ev["t"][0])
            if duration_us is not None and t_first is not None:
                ev = ev[ev["t"] < t_first + duration_us]
            w.write(ev)
            n += ev.size
            done = duration_us is not None and t_first is not None and (
                batch.t_end_us >= t_first + duration_us)
            if done or stop() or (max_bytes is not None and out.stat().st_size >= max_bytes):
                break
    return n, out.stat().st_size


@main.command(name="record")
@click.argument("src")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "raw_format", type=click.Choice(["evt2", "evt3"]), default="evt3",
              show_default=True)
@click.option("--duration-s", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop after this much sensor time.")
@click.option("--max-mb", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop once the file reaches this size (MB).")
def record_cmd(src: str, out: Path, raw_format: str, duration_s: float | None,
               max_mb: float | None) -> None:
    """Record SRC (file, udp://, camera, synthetic://) to OUT as EVT 2.0/3.0 .raw.

    Ctrl-C stops the recording cleanly (the file stays valid)."""
    if out.suffix.lower() != ".raw":
        raise click.UsageError(f"record writes .raw files, not {out.suffix!r}")
    import signal
    import threading

    stopped = threading.Event()
    old = signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:
        n, size = record(src, out, raw_format=raw_format,
                         duration_us=None if duration_s is None else int(duration_s * 1e6),
                         max_bytes=None if max_mb is None else int(max_mb * 1e6),
                         stop=stopped.is_set)
    except (FileNotFoundError, EventFormatError, ValueError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        signal.signal(signal.SIGINT, old)
    click.echo(f"recorded {n:,} events ({size:,} bytes) to {out}", err=True)


@main.command()
@click.argument("src")
@click.argument("dest")
@click.option("--pace", type=click.Choice(["asap", "realtime"]), default="realtime",
              show_default=True)
@click.option("--speed", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True)
def send(src: str, dest: str, pace: str, speed: float) -> None:
    """Replay SRC (any readable file or URI) to DEST (udp://host:port?format=augury|spif|faery)."""
    from augury.adapters.udp import send_file

    try:
        with open_source(src) as source:
            stats = send_file(source, dest, pace=pace, speed=speed)
    except (FileNotFoundError, EventFormatError, ValueError, ImportError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"events": stats.events, "packets": stats.packets,
                           "span_us": stats.span_us, "wall_s": round(stats.wall_s, 3)}))


# -- the daemon -------------------------------------------------------------------------------
def with_uri_option(uri: str, key: str, value: str, *, scheme: str) -> str:
    """``uri`` with the query option ``key=value`` set (replacing any); a UsageError if its
    scheme is not ``scheme`` (the option belongs to that kind of source)."""
    from urllib.parse import urlencode, urlsplit, urlunsplit

    if parse_uri(uri)[0] != scheme:
        raise click.UsageError(f"--{key.replace('_', '-')} applies to {scheme}:// sources, "
                               f"not {uri!r}")
    parts = urlsplit(uri)
    query = {**parse_uri(uri)[2], key: value}
    return urlunsplit(parts._replace(query=urlencode(query, safe=":,")))


def _overrides(**opts: object) -> dict[str, object]:
    keys = {"uri": "source.uri", "pace": "source.pace", "speed": "source.speed",
            "batch_us": "source.batch_us", "publish": "publish.endpoint",
            "control": "control.endpoint", "state_dir": "checkpoint.dir",
            "rate_ms": "publish.rate_ms"}
    return {keys[k]: v for k, v in opts.items() if v is not None}


@main.command()
@click.argument("uri", required=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML configuration file (see deploy/augury.toml).")
@click.option("--publish", help="ZeroMQ PUB endpoint [tcp://127.0.0.1:5556].")
@click.option("--control", help="ZeroMQ control endpoint (ROUTER, JSON requests), or 'none' [tcp://127.0.0.1:5557].")
@click.option("--pace", type=click.Choice(["asap", "realtime"]), help="Replay pacing.")
@click.option("--speed", type=float, help="Real-time factor when --pace realtime.")
@click.option("--batch-us", type=int, help="Batch span in µs.")
@click.option("--rate-ms", type=float, help="Publish every this many ms of stream time.")
@click.option("--state-dir", help="Checkpoint directory; resumes from the newest valid one.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config key, e.g. --set model.k1=16 --set checkpoint.every_s=60.")
@click.option("--max-batches", type=click.IntRange(1), default=None,
              help="Stop after this many batches (tests, demos).")
@click.option("--wait-subscriber-s", type=click.FloatRange(0), default=0.0,
              help="Wait up to this long for a first subscriber before reading the source.")
@click.option("--wait-sender-s", type=click.FloatRange(0), default=None,
              help="udp:// sources: how long to wait for a first sender before giving up "
              "(s; default: forever, as a daemon should; same as the URI option "
              "wait_sender_s).")
@click.option("--print-config", is_flag=True, help="Print the effective config and exit.")
@click.option("--backend", type=click.Choice(["numba", "lava"]), default="numba",
              show_default=True, help="Engine; lava runs layer 1 in Lava through a Python "
              "3.10 sidecar with the 'lava' extra; learning with it is slow (docs/lava.md).")
@click.option("--lava-python", type=click.Path(dir_okay=False), default=None,
              help="--backend lava: the Python 3.10 interpreter with the 'lava' extra that "
              "runs the sidecar [this interpreter, if it has lava-nc].")
def run(uri: str | None, config_path: Path | None, publish: str | None, control: str | None,
        pace: str | None, speed: float | None, batch_us: int | None, rate_ms: float | None,
        state_dir: str | None, sets: tuple[str, ...], max_batches: int | None,
        wait_subscriber_s: float, wait_sender_s: float | None, print_config: bool,
        backend: str, lava_python: str | None) -> None:
    """Run the daemon on URI (default: the synthetic scene), publishing over ZeroMQ."""
    import logging

    from augury.config import ConfigError, config_to_toml, load_config, parse_override
    from augury.daemon import build_daemon, stop_on_signals

    try:
        overrides = dict(parse_override(s) for s in sets)
        overrides.update(_overrides(uri=uri, pace=pace, speed=speed, batch_us=batch_us,
                                    publish=publish, control=control, state_dir=state_dir,
                                    rate_ms=rate_ms))
        cfg = load_config(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if wait_sender_s is not None:
        cfg = replace(cfg, source=replace(cfg.source, uri=with_uri_option(
            cfg.source.uri, "wait_sender_s", f"{wait_sender_s:g}", scheme="udp")))
    if print_config:
        click.echo(config_to_toml(cfg))
        return
    logging.basicConfig(level=cfg.log.level, format="%(asctime)s %(name)s %(levelname)s "
                        "%(message)s")
    from augury.lava.sidecar_client import SidecarError

    try:
        daemon = build_daemon(cfg, wait_subscriber_s=wait_subscriber_s, backend=backend,
                              lava_python=lava_python)
    except (FileNotFoundError, EventFormatError, ValueError, ImportError, OSError,
            SidecarError) as exc:
        raise click.ClickException(str(exc)) from exc
    log = logging.getLogger("augury")
    p = daemon.pipeline
    log.info("source %s (%s, %s); publishing on %s; control on %s%s", daemon.source.uri,
             daemon.source.format, daemon.source.geometry, daemon.publisher.bound_endpoint,
             daemon.control.bound_endpoint if daemon.control else "none",
             f"; resumed from {daemon.resumed_from}" if daemon.resumed_from else "")
    try:
        with stop_on_signals(p.stop_event):
            metrics = p.run(max_batches=max_batches)
    except SidecarError as exc:
        raise click.ClickException(f"--backend lava: {exc}") from exc
    finally:
        daemon.close()
    summary = {k: v for k, v in p.status().items() if k != "geometry"}
    source_stats = getattr(daemon.source, "source_stats", None)  # UDP: datagram accounting
    extra = {"source": source_stats()} if callable(source_stats) else {}
    click.echo(json.dumps({"summary": summary, "events_processed": metrics.events_processed,
                           **extra}))


@main.command()
@click.argument("endpoint", default="tcp://127.0.0.1:5556")
@click.option("--topic", "topics", multiple=True,
              type=click.Choice(["beliefs", "prediction", "surprise", "stats"]),
              help="Topics to show (default: all).")
@click.option("--count", type=click.IntRange(1), default=None, help="Exit after N messages.")
@click.option("--timeout-s", type=float, default=None,
              help="Exit when nothing arrives for this long (default: wait forever).")
@click.option("--warn-after-s", type=click.FloatRange(0, min_open=True), default=3.0,
              show_default=True,
              help="Say so when nothing arrives for this long, and ask the control socket "
              "whether a daemon is running.")
@click.option("--control", "control_endpoint", default=None,
              help="Control endpoint asked for `status` when nothing arrives, or 'none' "
              "[ENDPOINT's host, port + 1: the daemon's default layout].")
@click.option("--no-legend", is_flag=True, help="Do not print the legend first.")
@click.option("--render", "render_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also keep a PNG of the latest observed counts, predicted "
              "rates, beliefs and uncertainty up to date (needs the 'tools' extra: "
              "matplotlib).")
@click.option("--render-every", type=click.IntRange(1), default=20, show_default=True,
              help="Re-render after this many messages.")
def listen(endpoint: str, topics: tuple[str, ...], count: int | None,
           timeout_s: float | None, warn_after_s: float, control_endpoint: str | None,
           no_legend: bool, render_path: Path | None, render_every: int) -> None:
    """Print a one-line summary of every message published on ENDPOINT.

    A legend of the fields goes to stderr first (once); each message is one line on stdout.
    """
    import time

    from augury.client import Subscriber

    latest: dict[str, dict[str, np.ndarray]] = {}
    if render_path is not None:
        from augury.render import _pyplot

        try:
            _pyplot()
        except ImportError as exc:
            raise click.ClickException(str(exc)) from exc

    wanted = topics or ("beliefs", "prediction", "surprise", "stats")
    control = default_control_endpoint(endpoint) if control_endpoint is None else (
        None if control_endpoint.lower() == "none" else control_endpoint)
    if not no_legend:
        click.echo(legend(wanted), err=True)
    lines = MessageLines()
    n = 0
    warned = False
    last = time.monotonic()
    with Subscriber(endpoint, topics=wanted) as sub:
        while count is None or n < count:
            msg = sub.recv(timeout_ms=200)
            now = time.monotonic()
            if msg is None:
                quiet_s = now - last
                if timeout_s is not None and quiet_s >= timeout_s:
                    break
                if not warned and quiet_s >= warn_after_s:
                    click.echo(silence_notice(endpoint, quiet_s, control), err=True)
                    warned = True
                continue
            last = now
            warned = False
            click.echo(lines.line(msg))
            n += 1
            if render_path is not None:
                latest[msg.topic] = msg.arrays
                if n % render_every == 0:
                    _render(render_path, latest, msg.stream_time_us)
    if render_path is not None and latest:
        _render(render_path, latest, None)
    if n == 0:
        raise click.ClickException(f"no message from {endpoint} within {timeout_s} s")


def default_control_endpoint(endpoint: str) -> str | None:
    """The control endpoint a daemon publishing on ``endpoint`` has by default: same host,
    port + 1 (``augury run`` binds 5556 and 5557); None if endpoint is not tcp://HOST:PORT."""
    head, sep, port = endpoint.rpartition(":")
    if not endpoint.startswith("tcp://") or not sep or not port.isdigit():
        return None
    return f"{head}:{int(port) + 1}"


def silence_notice(endpoint: str, quiet_s: float, control: str | None, *,
                   timeout_ms: int = 500) -> str:
    """What ``listen`` says after quiet_s seconds without a message on endpoint: whether a
    daemon answers ``status`` on the control endpoint (asked with a timeout of timeout_ms)."""
    from augury.client import control_status

    text = f"listen: nothing from {endpoint} for {quiet_s:.1f} s; "
    if control is None:
        return text + "no control endpoint to ask whether a daemon runs (--control)"
    reply = control_status(control, timeout_ms=timeout_ms)
    if reply is None:
        return (text + f"no answer to `status` on {control} within {timeout_ms} ms: no "
                "daemon seems to be running there (start one with `augury run`; pass "
                "--control if it uses another control endpoint; a control socket that "
                "requires CURVE keys does not answer this check either)")
    if not reply.get("ok", False):
        return text + f"the control socket {control} answered: {reply.get('error')}"
    t_us = reply.get("t_us")
    return (text + f"a daemon answers on {control}: source {reply.get('source')}, stream time "
            f"{'n/a' if t_us is None else f'{t_us / 1e6:.3f} s'}, "
            f"{reply.get('events_processed', 0):,} events processed, "
            f"{reply.get('published', 0)} read-outs published (is it publishing on "
            f"{endpoint}? is its source sending?)")


def _render(path: Path, latest: dict[str, dict[str, np.ndarray]], t_us: int | None) -> None:
    from augury.render import render_snapshot

    try:
        render_snapshot(path, latest, "" if t_us is None else f"stream time {t_us / 1e6:.3f} s")
    except ValueError:  # only stats so far: nothing to draw yet
        pass


LEGEND = {
    "head": "every line: topic, seq (message number of the topic; gap=N: N missed), "
            "t (stream time of the read-out, s)",
    "beliefs": "mu_lN=m±s: layer-N belief units, mean posterior mean ± mean posterior sd "
               "(arbitrary units, over columns and units)",
    "prediction": "next Δ ms: events expected on the whole sensor in the next horizon window "
                  "± predictive sd (events), and as a rate (ev/s); peak: the largest expected "
                  "count of one pooled cell; seen [a, b) s: events observed in the last whole "
                  "window, stream time a to b",
    "surprise": "surprise: Σ ½ π e² of the prediction errors now (nats); z: its deviation from "
                "the running baseline in sd (> 3: unexpected); F: free energy (nats)",
    "stats": "in / proc: events/s received / processed over the interval since the previous "
             "stats line (wall clock; -- on the first); speed: stream s per wall s over it; "
             "drop: events dropped by the queue in total (+ in the interval); p50/p99: "
             "latency from arrival to publication (ms, recent); learning on/off",
}


def legend(topics: tuple[str, ...]) -> str:
    """The one-time legend of ``MessageLines`` for the given topics (several lines)."""
    import textwrap

    keys = ["head"] + [t for t in ("beliefs", "prediction", "surprise", "stats") if t in topics]
    rows = [textwrap.fill(LEGEND[k], width=100, initial_indent=f"  {'' if k == 'head' else k:<10} ",
                          subsequent_indent=" " * 13) for k in keys]
    return "legend:\n" + "\n".join(rows)


def _rate(per_s: float) -> str:
    """An event rate with a unit prefix: '1.23 Mev/s', '45.6 kev/s', '789 ev/s'."""
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} Mev/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} kev/s"
    return f"{per_s:.0f} ev/s"


class MessageLines:
    """One line per message (see ``LEGEND``); rates of ``stats`` lines are instantaneous:
    differences of the cumulative counters between this stats message and the previous one,
    over the daemon's uptime between them (s), not the averages since start it also sends.
    """

    def __init__(self) -> None:
        self._prev_stats: dict[str, float] | None = None

    def line(self, msg: Message) -> str:
        """The line of one message (topic, seq, stream time s, then the topic's fields)."""
        head = f"{msg.topic:<10} seq={msg.seq:<6} t={msg.stream_time_us / 1e6:9.3f}s"
        if msg.gap:
            head += f" gap={msg.gap}"
        a, m = msg.arrays, msg.meta
        if msg.topic == "beliefs":
            parts = [f"mu_l{i}={a[f'mu_l{i}'].mean():.3f}±{a[f'sigma_l{i}'].mean():.3f}"
                     for i in range(1, m.get("layers", 1) + 1) if f"mu_l{i}" in a]
            return f"{head} " + " ".join(parts)
        if msg.topic == "prediction":
            return f"{head} {prediction_fields(a, m)}"
        if msg.topic == "surprise":
            return (f"{head} surprise={m['total']:.3g} nats z={m['zscore']:+.2f} "
                    f"F={m['free_energy']:.3g} nats")
        return f"{head} {self._stats_fields(m)}"

    def _stats_fields(self, m: dict) -> str:
        now = {k: float(m.get(k) or 0.0) for k in ("uptime_s", "events_in", "events_processed",
                                                    "queue_dropped_events", "t_us")}
        prev, self._prev_stats = self._prev_stats, now
        dt = None if prev is None else now["uptime_s"] - prev["uptime_s"]
        if prev is None or dt is None or dt <= 0 or now["events_in"] < prev["events_in"]:
            rates = "in -- proc -- speed --"  # first stats line, or the daemon restarted
            ddrop = 0.0
        else:
            rates = (f"in {_rate((now['events_in'] - prev['events_in']) / dt)} "
                     f"proc {_rate((now['events_processed'] - prev['events_processed']) / dt)}"
                     f" speed {(now['t_us'] - prev['t_us']) / 1e6 / dt:.2f}x")
            ddrop = now["queue_dropped_events"] - prev["queue_dropped_events"]
        p50, p99 = m.get("latency_p50_ms"), m.get("latency_p99_ms")
        lat = "n/a" if p50 is None or p99 is None else f"{p50:.2f}/{p99:.2f} ms"
        return (f"{rates} drop {now['queue_dropped_events']:.0f} (+{ddrop:.0f}) "
                f"p50/p99 {lat} learning {'on' if m.get('learning') else 'off'}")


def prediction_fields(a: dict[str, np.ndarray], m: dict) -> str:
    """The prediction part of a line: expected events next window ± sd, as a rate, the peak
    cell, and the events seen in the last whole window (when the daemon sends them)."""
    horizon_ms = m.get("horizon_ms")
    if "count_mean" not in a or "count_var" not in a or not horizon_ms:  # older daemons
        r = a["rate_hz"]
        return f"rate {_rate(float(r.sum()))} peak {r.max():.1f} ev/s/cell"
    mean = float(a["count_mean"].sum())
    text = (f"next {horizon_ms:g} ms: {mean:,.0f} ± {np.sqrt(a['count_var'].sum()):,.0f} ev "
            f"({_rate(mean / (horizon_ms * 1e-3))}) peak {a['count_mean'].max():.2f} ev/cell")
    lo, hi = m.get("observed_t_start_us"), m.get("observed_t_end_us")
    if "count_observed" in a and lo is not None and hi is not None:
        text += (f" | seen [{lo / 1e6:.3f}, {hi / 1e6:.3f}) s: "
                 f"{a['count_observed'].sum():,.0f} ev")
    return text


@main.group(invoke_without_command=True)
@click.option("--duration-s", type=click.FloatRange(0.5), default=10.0, show_default=True,
              help="How long to run (wall time).")
@click.option("--scene", default="synthetic://bars?duration_us=none", show_default=True,
              help="Source URI (the endless synthetic scene by default).")
@click.option("--speed", type=float, default=1.0, show_default=True,
              help="Real-time factor of the scene.")
@click.pass_context
def demo(ctx: click.Context, duration_s: float, scene: str, speed: float) -> None:
    """Run the daemon in-process and print what a subscriber receives (beliefs arriving).

    `augury demo adaptation` runs the adaptation demo with the dashboard instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    import threading
    import time

    from augury.client import Subscriber
    from augury.config import ConfigError, load_config
    from augury.daemon import build_daemon, stop_on_signals

    try:
        cfg = load_config(None, {"source.uri": scene, "source.pace": "realtime",
                                 "source.speed": speed,
                                 "publish.endpoint": "tcp://127.0.0.1:*",
                                 "control.endpoint": "none", "publish.rate_ms": 500.0})
        daemon = build_daemon(cfg)
    except (ConfigError, FileNotFoundError, EventFormatError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    endpoint = daemon.publisher.bound_endpoint
    click.echo(f"augury demo: {daemon.source.uri} ({daemon.source.geometry}), publishing on "
               f"{endpoint} for {duration_s:g} s (as two programs: `augury run` and "
               f"`augury listen`)", err=True)
    errors: list[BaseException] = []

    def engine() -> None:
        try:
            daemon.pipeline.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=engine, name="augury-engine")
    received = 0
    click.echo(legend(("beliefs", "prediction", "surprise", "stats")), err=True)
    lines = MessageLines()
    with stop_on_signals(daemon.pipeline.stop_event), \
            Subscriber(endpoint, topics=("beliefs", "prediction", "surprise", "stats")) as sub:
        thread.start()
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and thread.is_alive():
            msg = sub.recv(timeout_ms=200)
            if msg is not None:
                received += 1
                click.echo(lines.line(msg))
        daemon.pipeline.stop_event.set()
        thread.join(timeout=30)
    daemon.close()
    if errors:
        raise click.ClickException(f"engine failed: {errors[0]}")
    click.echo(json.dumps({"messages": received,
                           "events_processed": daemon.pipeline.metrics.events_processed}))


@main.command(name="dashboard")
@click.option("--daemon", "daemon_endpoint", default="tcp://127.0.0.1:5556", show_default=True,
              help="The daemon's PUB endpoint.")
@click.option("--control", "control_endpoint", default=None,
              help="The daemon's control endpoint, or 'none' [the PUB port + 1].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve the page on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port of the page (0: any free port).")
@click.option("--stall-s", type=click.FloatRange(0, min_open=True), default=3.0,
              show_default=True, help="Seconds without a message before the page says stalled.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def dashboard_cmd(daemon_endpoint: str, control_endpoint: str | None, host: str, port: int,
                  stall_s: float, open_browser: bool) -> None:
    """Serve a live web page of a running daemon: maps, time series and control buttons."""
    from augury.dashboard_cli import serve_until_interrupted

    control = default_control_endpoint(daemon_endpoint) if control_endpoint is None else (
        None if control_endpoint.lower() == "none" else control_endpoint)
    serve_until_interrupted(daemon_endpoint, control, host=host, port=port, stall_s=stall_s,
                            open_browser=open_browser)


@demo.command(name="adaptation")
@click.option("--quick", is_flag=True, help="Short phases: finishes in under a minute.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("augury-demo"), show_default=True,
              help="Directory for the PNG strip, the Markdown summary and the JSON result.")
@click.option("--no-browser", is_flag=True, help="Print the dashboard URL, do not open it.")
@click.option("--no-dashboard", is_flag=True, help="Do not serve the dashboard at all.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port of the dashboard page (0: any free port).")
@click.option("--phase-s", type=click.FloatRange(0.5), default=None,
              help="Seconds of stream time per phase [10, or 3 with --quick].")
def demo_adaptation(quick: bool, out_dir: Path, no_browser: bool, no_dashboard: bool,
                    port: int, phase_s: float | None) -> None:
    """A scene that changes on a schedule; watch surprise jump at each shift and fall again."""
    from augury.demo_adaptation import DemoOptions, run_demo

    opts = DemoOptions(quick=quick, out_dir=out_dir, open_browser=not no_browser,
                       dashboard=not no_dashboard, port=port, phase_s=phase_s)
    try:
        result = run_demo(opts, echo=lambda text: click.echo(text, err=True))
    except (OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result))


@main.command(name="lava-serve")
@click.option("--bind", default="tcp://127.0.0.1:0", show_default=True,
              help="ZeroMQ REP endpoint to bind (loopback; port 0: a free port).")
def lava_serve(bind: str) -> None:
    """Serve layer 1 in Lava over ZeroMQ (first cut; Python 3.10 with the 'lava' extra).

    Prints {"endpoint": ...} once bound; protocol in augury/lava/sidecar.py, docs/lava.md.
    """
    from augury.lava import LavaError, require_lava

    try:
        require_lava()
    except LavaError as exc:
        raise click.ClickException(str(exc)) from exc
    from augury.lava.sidecar import serve

    sys.exit(serve(bind))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
