"""Assemble the daemon from a Config: source, network (resumed from a checkpoint), publisher,
control server, checkpoints, and signal handling. ``augury run`` is a thin shell over this."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from augury.adapters.base import EventSource, open_source, parse_uri
from augury.checkpoint import CheckpointManager
from augury.config import Config
from augury.control import ControlServer, server_curve_keys
from augury.events import EventBatch, empty_events, make_events
from augury.model.compat import GEOMETRY_KEYS
from augury.model.network import Network
from augury.model.spec import ModelSpec
from augury.pipeline import Pipeline, PipelineOptions, restore_network
from augury.publish import Publisher

log = logging.getLogger("augury.daemon")

LIVE_SCHEMES = ("udp", "faery", "dv", "metavision")


def overflow_policy(cfg: Config) -> str:
    """``auto`` means ``drop_oldest`` for live sources and ``block`` for recordings."""
    policy = cfg.pipeline.overflow
    if policy != "auto":
        return policy
    scheme = parse_uri(cfg.source.uri)[0]
    return "drop_oldest" if scheme in LIVE_SCHEMES else "block"


def model_spec(cfg: Config, source: EventSource,
               saved: dict[str, Any] | None = None) -> ModelSpec:
    """The model spec from ``[model]`` with the sensor geometry taken from the source.

    saved: the spec of the checkpoint the daemon will resume from, if any: the geometry keys
    that ``[model]`` leaves unset are taken from it (so that upgrading, whose defaults may
    differ, resumes what was learned instead of refusing it); otherwise pool is chosen from
    the sensor size and the rest are ModelSpec's defaults.
    """
    table = {k: v for k, v in cfg.model.items() if k not in ("width", "height")}
    if saved and saved.get("width") == source.geometry.width \
            and saved.get("height") == source.geometry.height:
        for k in GEOMETRY_KEYS:
            if k not in table and k in saved and k not in ("width", "height"):
                table[k] = saved[k]
    table.setdefault("pool", 0)  # unless configured or resumed: chosen from the sensor size
    return ModelSpec.from_dict({**table, "width": source.geometry.width,
                                "height": source.geometry.height})


def saved_spec(checkpoints: CheckpointManager) -> dict[str, Any] | None:
    """The model spec (a dict) of the newest valid checkpoint, or None."""
    found = checkpoints.load_latest()
    if found is None:
        return None
    try:
        d = json.loads(str(found.meta.get("spec")))
    except (TypeError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def warm_up(spec: ModelSpec) -> None:
    """Compile (or load from numba's cache) the model kernels before serving, on a throwaway
    network, so that the first real batch is not delayed by compilation."""
    scratch = Network(spec)
    scratch.step(EventBatch(empty_events(), 0, 1, 0))
    scratch.step(EventBatch(make_events(np.array([1]), np.array([0]), np.array([0]),
                                        np.array([1])), 1, 2, 1))


LAVA_SPEC = {"layers": 1, "clocked_input": True, "settle": 0.0}
"""The [model] settings ``--backend lava`` needs; used unless [model] sets them (then the
backend refuses a conflicting value with a message naming it)."""


@dataclass
class Daemon:
    """Everything ``augury run`` owns; ``close()`` releases sockets, the source and the Lava
    sidecar (``lava``, a SidecarClient, with ``--backend lava``)."""

    pipeline: Pipeline
    source: EventSource
    publisher: Publisher
    control: ControlServer | None
    resumed_from: Path | None
    lava: Any = None

    def close(self) -> None:
        try:
            if self.control is not None:
                self.control.close()
            self.publisher.close(linger=0)
            self.source.close()
        finally:
            if self.lava is not None:
                self.lava.close()


def _start_lava(lava_python: str | None) -> Any:
    """Start the Lava sidecar (``augury lava-serve``) with subprocess, before any thread of
    the daemon exists; returns its SidecarClient (which watches the process)."""
    from augury.lava.sidecar_client import SidecarClient, start_sidecar
    from augury.lava.sidecar_client import lava_python as find_python

    python = find_python(lava_python)
    proc, endpoint = start_sidecar(python)
    log.info("Lava sidecar pid %d (%s) on %s", proc.pid, python, endpoint)
    return SidecarClient(endpoint, timeout_s=120.0, proc=proc)


def build_daemon(cfg: Config, *, wait_subscriber_s: float = 0.0, backend: str = "numba",
                 lava_python: str | None = None) -> Daemon:
    """Open the source, build or resume the network, bind sockets. Raises on any error
    (ValueError / OSError / EventFormatError / SidecarError), leaving nothing open.

    ``backend = "lava"`` first starts the Lava sidecar with ``lava_python`` (default: this
    interpreter if it has lava-nc) and serves layer 1 through it (augury.lava.backend).
    """
    if backend not in ("numba", "lava"):
        raise ValueError(f"backend must be numba or lava, got {backend!r}")
    lava = _start_lava(lava_python) if backend == "lava" else None
    try:
        source = open_source(cfg.source.uri)
    except BaseException:
        if lava is not None:
            lava.close()
        raise
    publisher: Publisher | None = None
    control: ControlServer | None = None
    try:
        checkpoints = None
        resumed = None
        saved = None
        if cfg.checkpoint.dir is not None:
            checkpoints = CheckpointManager(cfg.checkpoint.dir, cfg.checkpoint.every_s,
                                            cfg.checkpoint.keep, background=True)
            saved = saved_spec(checkpoints)
        spec = model_spec(cfg, source, saved)
        if lava is not None:
            spec = replace(spec, **{k: v for k, v in LAVA_SPEC.items() if k not in cfg.model})
        warm_up(spec)
        network = Network(spec)
        if checkpoints is not None:
            resumed = restore_network(network, checkpoints)
        if lava is not None:
            from augury.lava.backend import LavaNetwork

            network = LavaNetwork.from_network(network, lava)
            if network.learning:
                n = network.write_elements
                log.warning("--backend lava with learning on: every learning epoch (%d µs) "
                            "writes about %d values into Lava through Var.set (≈ 15 µs each, "
                            "≈ %.2f s): slow; serve a checkpoint trained with --backend numba "
                            "with learning off (control: pause_learning) for speed",
                            network.spec.learn_us, n, n * 15e-6)
        publisher = Publisher(cfg.publish.endpoint, hwm=cfg.publish.hwm,
                              isolate_slow_subscribers=cfg.publish.isolate_slow_subscribers)
        if cfg.control.endpoint.lower() != "none":
            curve = (server_curve_keys(cfg.control.curve_keys_dir)
                     if cfg.control.curve_keys_dir else None)
            clients = (Path(cfg.control.curve_keys_dir) / "clients"
                       if cfg.control.curve_keys_dir else None)
            control = ControlServer(cfg.control.endpoint, curve=curve,
                                    curve_clients_dir=clients if clients and clients.is_dir()
                                    else None)
        options = PipelineOptions(
            batch_us=cfg.source.batch_us,
            publish_every_us=int(cfg.publish.rate_ms * 1000),
            queue_size=cfg.pipeline.queue_size,
            overflow=overflow_policy(cfg),
            pace=cfg.source.pace,
            speed=cfg.source.speed,
            wait_subscriber_s=wait_subscriber_s,
            dictionary_every_s=cfg.publish.dictionary_s,
        )
        # the pipeline registers its control commands (arguments checked) on ``control``
        pipeline = Pipeline(source, network, publisher, options, control=control,
                            checkpoints=checkpoints,
                            state_meta={"source": cfg.source.uri})
    except BaseException:
        if control is not None:
            control.close()
        if publisher is not None:
            publisher.close(linger=0)
        source.close()
        if lava is not None:
            lava.close()
        raise
    return Daemon(pipeline, source, publisher, control, resumed, lava)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT while inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping (a final checkpoint follows)", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
