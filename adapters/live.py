"""Live cameras through faery, dv-processing (cameras and DV network streams) and OpenEB.

URIs (``open_source`` dispatches here):

* ``faery://`` or ``faery://inivation`` / ``faery://prophesee``: a USB camera through
  ``faery.events_stream_from_camera`` (event_camera_drivers or neuromorphic_drivers
  underneath); format "faery camera";
* ``dv://camera`` or ``dv://camera/SERIAL``: an iniVation camera through
  ``dv_processing.io.camera.open``; format "DV camera";
* ``dv://HOST:PORT``: a DV network stream (TCP, e.g. DV's "Network TCP server" output or a
  ``dv.io.NetworkWriter``) through ``dv_processing.io.NetworkReader``; format "DV network";
* ``metavision://`` or ``metavision://SERIAL``: a Prophesee camera through OpenEB's
  ``metavision_hal`` (``DeviceDiscovery.open``); raw EVT buffers from ``I_EventsStream`` are
  decoded by augury's own streaming ``EvtDecoder``; format "Metavision HAL".

Every source is a ``LiveSource`` (a ``ThreadedSource``): a reader thread pulls from the
driver into a bounded ``EventRing`` (``overflow="drop_oldest"`` by default: a live sensor
wants the freshest data; every dropped event is counted). Geometry always comes from the
device (faery ``dimensions()``, dv ``getEventResolution()``, HAL ``get_i_geometry()``).

Driver modules are imported inside the openers only; a missing one raises ImportError naming
what to install. Tests and tools pass ``driver=`` (an object with the same API as the driver
module: ``faery``, ``dv_processing`` or ``metavision_hal``) to run against fake devices.

End of stream: a driver that stops (faery iterator exhausted, dv ``isRunning()`` false,
HAL ``poll_buffer() < 0``) ends the source cleanly: ``chunks()`` hands out everything
received, then returns. A driver that raises ends the reader thread; ``chunks()`` re-raises
a ``CameraError`` naming the source (the driver's exception is its ``__cause__``) after the
chunks received before it.

Design note: dv-processing's ``getNextEventBatch()`` and HAL's ``poll_buffer()`` do not
block, so the reader polls them and waits ``poll_s`` on the stop event when nothing is
there; HAL's blocking ``wait_next_buffer()`` is not used because its Python binding keeps
the GIL while it waits, and a silent camera would then freeze the whole process (including
``close()``). faery's camera iterator blocks inside the driver: ``close()`` then waits at
most ``join_timeout_s`` and reports ``thread_alive``; the driver objects are released only
once the reader thread has ended (releasing them under a running thread could crash it).

DV network streams (dv-processing 2.0.4, measured): a NetworkReader whose caller falls
~1,000 packets behind stops delivering for good while ``isRunning()`` stays true; the
reader thread therefore does nothing but fetch and convert (see ``DvLink``), and the bench
(``tools/bench/sources.py``) measures the lossless rate.

Drop counters: ``driver_dropped`` is the driver's own count of events it lost, read from an
integer attribute (or zero-argument method) ``dropped_events`` of the driver object (faery
stream, dv reader/camera, HAL device) when it has one; the drivers released today (faery
0.7.1, dv-processing 2.0.4, OpenEB HAL bindings) expose none, so it is None for them.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
from numba import njit

from augury.adapters.base import Chunk
from augury.adapters.evt import DecoderCounters, EvtDecoder, normalize_format
from augury.adapters.ring import EventRing, ThreadedSource
from augury.events import (
    EVENT_DTYPE,
    Counters,
    EventFormatError,
    SensorGeometry,
    empty_events,
    to_events,
)

CAMERA_EXTRA = "pip install 'augury[camera]'"
OPENEB_HINT = "install OpenEB (metavision_hal Python bindings) from Prophesee"


class CameraError(RuntimeError):
    """A camera driver failed; the message names the source, the driver's error is the cause."""


def import_driver(name: str, hint: str) -> Any:
    """``importlib.import_module(name)``; ImportError naming ``hint`` when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"the {name!r} module is needed for this source: {hint}") from exc


# -------------------------------------------------------------------------------------------
# options


def _opt_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return float(value)


@dataclass(frozen=True)
class LiveOptions:
    """Options shared by every live source (URI query strings are converted).

    capacity_events: ring bound (events; 13 B each); overflow: "drop_oldest" | "drop_newest" |
    "block"; max_items: ring bound in chunks; idle_timeout_s: end ``chunks()`` after this long
    without data (None: never); poll_s: wait (s) when a non-blocking driver has no data;
    join_timeout_s: bound on the wait for the reader thread in ``close()`` (s);
    reorder_window_us: tolerated timestamp disorder (µs).
    """

    capacity_events: int = 1 << 21
    overflow: str = "drop_oldest"
    max_items: int = 4096
    idle_timeout_s: float | None = None
    poll_s: float = 0.002
    join_timeout_s: float = 2.0
    reorder_window_us: int = 0

    @classmethod
    def split(cls, opts: dict[str, Any]) -> tuple[LiveOptions, dict[str, Any]]:
        """(LiveOptions from the known keys of opts, the remaining driver-specific keys)."""
        names = {f.name for f in fields(cls)}
        mine = {k: v for k, v in opts.items() if k in names}
        rest = {k: v for k, v in opts.items() if k not in names}
        conv: dict[str, Any] = {}
        for k, v in mine.items():
            if k in ("capacity_events", "max_items", "reorder_window_us"):
                conv[k] = int(v)
            elif k in ("poll_s", "join_timeout_s"):
                conv[k] = float(v)
            elif k == "idle_timeout_s":
                conv[k] = _opt_float(v)
            else:
                conv[k] = str(v)
        out = cls(**conv)
        if out.poll_s <= 0 or out.join_timeout_s <= 0:
            raise ValueError(f"poll_s and join_timeout_s must be > 0, got {out.poll_s}, "
                             f"{out.join_timeout_s}")
        if out.reorder_window_us < 0:
            raise ValueError(f"reorder_window_us must be >= 0, got {out.reorder_window_us}")
        return out, rest


def _reject_unknown(rest: dict[str, Any], known: set[str], scheme: str) -> None:
    extra = set(rest) - known
    if extra:
        raise ValueError(f"unknown {scheme}:// option(s) {sorted(extra)}; known: "
                         f"{sorted(known | {f.name for f in fields(LiveOptions)})}")


# -------------------------------------------------------------------------------------------
# the device protocol and the source


class DeviceLink(Protocol):
    """What a LiveSource needs from a driver: small, so that fakes are easy to write."""

    geometry: SensorGeometry
    format: str

    def produce(self, stop: threading.Event, poll_s: float) -> Iterator[Chunk]:
        """Chunks until the driver stops or ``stop`` is set (run in the reader thread)."""
        ...

    def driver_dropped(self) -> int | None: ...

    def biases(self) -> dict[str, int]: ...

    def set_bias(self, name: str, value: int) -> None: ...

    def set_erc_rate(self, events_per_s: int) -> None: ...

    def release(self) -> None: ...


def _driver_counter(obj: Any) -> int | None:
    """The driver object's own ``dropped_events`` (attribute or zero-argument method)."""
    value = getattr(obj, "dropped_events", None)
    if callable(value):
        value = value()
    return None if value is None else int(value)


class LiveSource(ThreadedSource):
    """A live camera or network stream: a reader thread fills a bounded EventRing.

    ``link`` wraps the driver (see ``DeviceLink``). Beyond ``ThreadedSource``: ``driver_dropped``
    (events the driver itself reports lost, or None), ``biases()`` / ``set_bias(name, value)``
    and ``set_erc_rate(events_per_s)`` (NotImplementedError where the driver has no such
    control). ``dropped_events`` is what the ring dropped (events).
    """

    def __init__(self, link: DeviceLink, uri: str, options: LiveOptions) -> None:
        self.link = link
        self.options = options
        ring = EventRing(options.capacity_events, options.overflow, max_items=options.max_items)
        super().__init__(self._produce_guarded, ring, geometry=link.geometry, uri=uri,
                         format=link.format, idle_timeout_s=options.idle_timeout_s,
                         poll_s=min(0.05, max(options.poll_s, 0.001)),
                         join_timeout_s=options.join_timeout_s, start=False)
        self.reorder_window_us = options.reorder_window_us
        self.start()

    def _produce_guarded(self, stop: threading.Event) -> Iterator[Chunk]:
        try:
            yield from self.link.produce(stop, self.options.poll_s)
        except (CameraError, EventFormatError):
            raise
        except Exception as exc:
            raise CameraError(f"{self.uri} ({self.format}): the driver failed: "
                              f"{type(exc).__name__}: {exc}") from exc

    @property
    def driver_dropped(self) -> int | None:
        """Events the driver reports it lost (its own counter), None if it keeps none."""
        return self.link.driver_dropped()

    @property
    def dropped_events(self) -> int:
        """Events dropped by the ring (overflow)."""
        return self.ring.dropped_events

    def biases(self) -> dict[str, int]:
        """The sensor's bias settings by name ({} when the driver exposes none)."""
        return self.link.biases()

    def set_bias(self, name: str, value: int) -> None:
        """Set one bias (names as in ``biases()``)."""
        self.link.set_bias(name, int(value))

    def set_erc_rate(self, events_per_s: int) -> None:
        """Enable the sensor's event-rate controller at ``events_per_s`` (events/s)."""
        if int(events_per_s) <= 0:
            raise ValueError(f"events_per_s must be > 0, got {events_per_s}")
        self.link.set_erc_rate(int(events_per_s))

    def close(self) -> None:
        """Stop and join the reader thread (bounded), then release the driver if it ended."""
        if self._closed:
            return
        super().close()
        if not self.thread_alive:
            self.link.release()


# -------------------------------------------------------------------------------------------
# faery


class FaeryLink:
    """A faery camera stream: iterating yields faery event arrays (t, x, y, on)."""

    format = "faery camera"

    def __init__(self, stream: Any, uri: str) -> None:
        self.stream = stream
        self.uri = uri
        w, h = stream.dimensions()
        self.geometry = SensorGeometry(int(w), int(h))

    def produce(self, stop: threading.Event, poll_s: float) -> Iterator[Chunk]:
        for arr in self.stream:  # blocks inside the driver until a packet arrives
            if stop.is_set():
                return
            if arr is None or len(arr) == 0:
                continue
            ev = to_events(np.asarray(arr), source=self.uri)
            yield Chunk(ev, Counters(read=int(ev.size)))

    def driver_dropped(self) -> int | None:
        return _driver_counter(self.stream)

    def biases(self) -> dict[str, int]:
        return {}

    def set_bias(self, name: str, value: int) -> None:
        raise NotImplementedError("faery 0.7.1 has no bias control for cameras")

    def set_erc_rate(self, events_per_s: int) -> None:
        raise NotImplementedError("faery 0.7.1 has no event-rate control for cameras")

    def release(self) -> None:
        self.stream = None


_FAERY_MAKERS = {"": None, "auto": None, "inivation": "Inivation", "prophesee": "Prophesee"}


def open_faery(location: str, *, driver: Any = None, **opts: Any) -> LiveSource:
    """Open ``faery://[inivation|prophesee]?faery_driver=Auto&buffer_size=1024&...``.

    ``faery_driver``: "Auto" | "EventCameraDrivers" | "NeuromorphicDrivers" (faery's
    ``driver`` argument); ``buffer_size``: faery's packet buffer (events); the rest are
    ``LiveOptions``. ``driver``: the faery module to use (default: ``import faery``).
    Raises ImportError without faery, ValueError for an unknown manufacturer or option, and
    faery's own error when no camera is found.
    """
    live, rest = LiveOptions.split(opts)
    _reject_unknown(rest, {"faery_driver", "buffer_size"}, "faery")
    key = location.strip("/").lower()
    if key not in _FAERY_MAKERS:
        raise ValueError(f"faery:// location must be empty, 'inivation' or 'prophesee', "
                         f"got {location!r}")
    faery = driver if driver is not None else import_driver("faery", CAMERA_EXTRA)
    uri = f"faery://{key}"
    try:
        stream = faery.events_stream_from_camera(
            driver=rest.get("faery_driver", "Auto"), manufacturer=_FAERY_MAKERS[key],
            buffer_size=int(rest.get("buffer_size", 1024)))
    except Exception as exc:
        raise CameraError(f"{uri}: no camera opened through faery: {exc}") from exc
    return LiveSource(FaeryLink(stream, uri), uri, live)


# -------------------------------------------------------------------------------------------
# dv-processing: cameras and network streams share the InputBase API


_DV_THRESHOLDS = (("contrast_threshold_on", "ContrastThresholdOn"),
                  ("contrast_threshold_off", "ContrastThresholdOff"))


_DRAIN_POLLS = 3
DV_DTYPE = np.dtype({"names": ["timestamp", "x", "y", "polarity"],
                     "formats": ["<i8", "<i2", "<i2", "i1"], "offsets": [0, 8, 10, 12],
                     "itemsize": 16})
"""dv-processing's ``EventStore.numpy()`` dtype (16-byte records): t µs int64, x/y int16,
polarity int8 (0/1)."""


@njit(cache=True, nogil=True)
def _dv_kernel(t_us: np.ndarray, x: np.ndarray, y: np.ndarray, pol: np.ndarray,
               out: np.ndarray) -> int:
    """out[i] ← (t_us[i], x[i], y[i], pol[i] > 0) for i < n; columns (n,), out EVENT_DTYPE (n,).

    Returns the index of the first event with a negative t, x or y (out is then filled only
    up to it), or -1 when all n fit.
    """
    for i in range(t_us.shape[0]):
        t, xi, yi = t_us[i], x[i], y[i]
        if t < 0 or xi < 0 or yi < 0:
            return i
        e = out[i]
        e.t = t
        e.x = xi
        e.y = yi
        e.p = 1 if pol[i] > 0 else 0
    return -1


def dv_to_events(arr: np.ndarray, *, source: str = "") -> np.ndarray:
    """dv-processing events (``DV_DTYPE``) -> EVENT_DTYPE in one compiled pass.

    ~10x faster than the generic ``to_events`` on packet-sized arrays (a DV network reader
    that is not drained fast enough loses packets, see ``DvLink``). Other dtypes go through
    ``to_events``. Raises EventFormatError naming the event with a negative t, x or y.
    """
    if arr.dtype.names != DV_DTYPE.names:
        return to_events(arr, source=source)
    out = np.empty(arr.shape[0], dtype=EVENT_DTYPE)
    bad = _dv_kernel(arr["timestamp"], arr["x"], arr["y"], arr["polarity"], out)
    if bad >= 0:
        e = arr[bad]
        raise EventFormatError(f"event {bad}: negative t, x or y (t={int(e['timestamp'])} µs, "
                               f"x={int(e['x'])}, y={int(e['y'])})", source=source)
    return out


class DvLink:
    """A dv-processing input (``io.NetworkReader`` or a camera from ``io.camera.open``).

    ``getNextEventBatch()`` returns an EventStore or None (nothing yet) without blocking;
    ``isRunning()`` turns false when the stream ends (peer closed, camera unplugged).
    Measured with dv-processing 2.0.4 on loopback: a NetworkReader whose caller falls about
    1,000 packets behind stops delivering for good, while ``isRunning()`` stays true (the
    rest of the stream is lost; nothing counts it). A pause of a few hundred ms at 12 Mev/s
    is enough: a numba first call, or ~110 µs of conversion per packet on a loaded 2-core
    machine. So the reader thread only fetches and converts (``dv_to_events``, ~12 µs per
    1,300-event packet, compiled before connecting), and ``overflow="block"`` is a bad idea
    for DV network streams (a slow consumer would stall the reader); use ``idle_timeout_s``
    to end a stream that went silent.
    """

    def __init__(self, reader: Any, uri: str, fmt: str) -> None:
        self.reader = reader
        self.uri = uri
        self.format = fmt
        res = reader.getEventResolution()
        if res is None:
            raise EventFormatError("the stream carries no event resolution (no event stream?)",
                                   source=uri)
        w, h = res
        self.geometry = SensorGeometry(int(w), int(h))

    def _chunk(self, store: Any) -> Chunk | None:
        if store is None or len(store) == 0:
            return None
        ev = dv_to_events(store.numpy(), source=self.uri)
        return Chunk(ev, Counters(read=int(ev.size)))

    def produce(self, stop: threading.Event, poll_s: float) -> Iterator[Chunk]:
        reader = self.reader
        idle_after_end = 0  # polls that found nothing since the end was noticed
        while not stop.is_set():
            store = reader.getNextEventBatch()
            if store is None:
                # batches received before the end may still be queued: drain, and stop only
                # after _DRAIN_POLLS empty polls in a row once the driver reports the end
                if idle_after_end or not reader.isRunning():
                    idle_after_end += 1
                    if idle_after_end > _DRAIN_POLLS:
                        return
                stop.wait(poll_s)
                continue
            if idle_after_end:
                idle_after_end = 1
            chunk = self._chunk(store)
            if chunk is not None:
                yield chunk

    def driver_dropped(self) -> int | None:
        return _driver_counter(self.reader)

    def biases(self) -> dict[str, int]:
        r = self.reader
        return {name: int(getattr(r, "get" + m)()) for name, m in _DV_THRESHOLDS
                if hasattr(r, "get" + m)}

    def set_bias(self, name: str, value: int) -> None:
        setters = {n: "set" + m for n, m in _DV_THRESHOLDS}
        if name not in setters or not hasattr(self.reader, setters[name]):
            raise NotImplementedError(f"{self.format} {self.uri}: no settable bias {name!r} "
                                      f"(available: {sorted(self.biases())})")
        getattr(self.reader, setters[name])(value)

    def set_erc_rate(self, events_per_s: int) -> None:
        raise NotImplementedError(f"{self.format}: dv-processing has no event-rate controller")

    def release(self) -> None:
        self.reader = None


def _parse_dv_location(location: str) -> tuple[str, str | None, int | None]:
    """'camera[/SERIAL]' -> ("camera", serial, None); 'HOST:PORT' -> ("network", host, port)."""
    loc = location.strip().strip("/")
    head, _, serial = loc.partition("/")
    if head.lower() == "camera":
        return "camera", serial or None, None
    host, sep, port_s = loc.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) <= 65535:
        raise ValueError(f"dv:// location must be 'camera', 'camera/SERIAL' or 'HOST:PORT', "
                         f"got {location!r}")
    return "network", host, int(port_s)


def open_dv(location: str, *, driver: Any = None, **opts: Any) -> LiveSource:
    """Open ``dv://camera[/SERIAL]`` (iniVation camera) or ``dv://HOST:PORT`` (DV network
    stream, TCP). Options: ``LiveOptions``. ``driver``: the dv_processing module to use
    (default: ``import dv_processing``). Raises ImportError without dv-processing, ValueError
    for a bad location, the driver's error when the camera or server cannot be reached, and
    EventFormatError when the stream has no event resolution.
    """
    live, rest = LiveOptions.split(opts)
    _reject_unknown(rest, set(), "dv")
    kind, host_or_serial, port = _parse_dv_location(location)
    dv = driver if driver is not None else import_driver("dv_processing", CAMERA_EXTRA)
    dv_to_events(np.zeros(1, DV_DTYPE))  # compile/load the kernel before data flows
    if kind == "camera":
        uri = f"dv://camera/{host_or_serial or ''}".rstrip("/")
        try:
            cam = (dv.io.camera.open() if host_or_serial is None
                   else dv.io.camera.open(host_or_serial))
        except Exception as exc:
            raise CameraError(f"{uri}: no iniVation camera opened: {exc}") from exc
        return LiveSource(DvLink(cam, uri, "DV camera"), uri, live)
    uri = f"dv://{host_or_serial}:{port}"
    try:
        reader = dv.io.NetworkReader(host_or_serial, port)
    except Exception as exc:
        raise CameraError(f"{uri}: cannot connect to the DV network stream: {exc}") from exc
    return LiveSource(DvLink(reader, uri, "DV network"), uri, live)


# -------------------------------------------------------------------------------------------
# OpenEB metavision_hal


def raw_bytes(raw: Any) -> np.ndarray:
    """A flat uint8 view of a HAL raw buffer (numpy array, buffer object or bound vector)."""
    if isinstance(raw, np.ndarray):
        return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(raw), dtype=np.uint8)
    except TypeError:  # a bound std::vector without the buffer protocol: element-wise copy
        return np.fromiter(raw, dtype=np.uint8, count=len(raw))


def _chunk_counters(before: DecoderCounters, after: DecoderCounters) -> Counters:
    lost = (after.out_of_bounds - before.out_of_bounds) + (after.orphans - before.orphans)
    return Counters(read=(after.events - before.events) + lost, dropped=lost,
                    malformed=after.malformed - before.malformed)


def _facility(device: Any, *names: str) -> Any:
    """The first facility the device offers among ``get_<name>()`` getters, or None."""
    for name in names:
        getter = getattr(device, name, None)
        if getter is not None:
            facility = getter()
            if facility is not None:
                return facility
    return None


def _hal_format(device: Any, fmt: str | None, source: str) -> tuple[str, bool]:
    """(EVT format, EVT 2.1 legacy endianness) from the option or the device."""
    if fmt is None:
        ident = _facility(device, "get_i_hw_identification")
        getter = getattr(ident, "get_current_data_encoding_format", None)
        if getter is None:
            raise EventFormatError("the device does not report its data encoding format; "
                                   "pass format=evt2|evt21|evt3", source=source)
        fmt = str(getter())
    name, *params = [p.strip() for p in fmt.split(";")]
    legacy = any(p.replace(" ", "").lower() == "endianness=legacy" for p in params)
    return normalize_format(name, source=source), legacy


class HalLink:
    """An OpenEB HAL device: ``get_i_events_stream()`` raw buffers decoded by ``EvtDecoder``."""

    format = "Metavision HAL"

    def __init__(self, device: Any, uri: str, fmt: str | None = None) -> None:
        self.device = device
        self.uri = uri
        geo = _facility(device, "get_i_geometry")
        if geo is None:
            raise EventFormatError("the device has no geometry facility", source=uri)
        self.geometry = SensorGeometry(int(geo.get_width()), int(geo.get_height()))
        self.stream = _facility(device, "get_i_events_stream")
        if self.stream is None:
            raise EventFormatError("the device has no events stream facility", source=uri)
        evt, legacy = _hal_format(device, fmt, uri)
        self.decoder = EvtDecoder(evt, self.geometry, source=uri, evt21_legacy=legacy)

    def produce(self, stop: threading.Event, poll_s: float) -> Iterator[Chunk]:
        stream, dec = self.stream, self.decoder
        stream.start()
        try:
            while not stop.is_set():
                ret = stream.poll_buffer()
                if ret < 0:  # stopped or unplugged: an incomplete last word is malformed
                    before = dec.counters
                    dec.finish()
                    tail = _chunk_counters(before, dec.counters)
                    if tail.malformed:
                        yield Chunk(empty_events(), tail, dec.time_us)
                    return
                if ret == 0:
                    stop.wait(poll_s)
                    continue
                before = dec.counters
                ev = dec.decode(raw_bytes(stream.get_latest_raw_data()))
                yield Chunk(ev, _chunk_counters(before, dec.counters), dec.time_us)
        finally:
            stream.stop()

    def driver_dropped(self) -> int | None:
        return _driver_counter(self.device)

    def biases(self) -> dict[str, int]:
        b = _facility(self.device, "get_i_ll_biases")
        return {} if b is None else {str(k): int(v) for k, v in b.get_all_biases().items()}

    def set_bias(self, name: str, value: int) -> None:
        b = _facility(self.device, "get_i_ll_biases")
        if b is None:
            raise NotImplementedError(f"{self.uri}: the device has no bias facility")
        if b.set(name, value) is False:
            raise ValueError(f"{self.uri}: the device refused bias {name}={value}")

    def set_erc_rate(self, events_per_s: int) -> None:
        erc = _facility(self.device, "get_i_erc_module", "get_i_erc")
        if erc is None:
            raise NotImplementedError(f"{self.uri}: the device has no event-rate controller")
        erc.enable(True)
        erc.set_cd_event_rate(events_per_s)

    def release(self) -> None:
        self.stream = None
        self.device = None


def list_faery_backends(*, driver: Any = None) -> list[str]:
    """faery's camera back-ends that are installed ("EventCameraDrivers",
    "NeuromorphicDrivers"); faery 0.7.1 has no device listing of its own."""
    faery = driver if driver is not None else import_driver("faery", CAMERA_EXTRA)
    eci = faery.event_camera_input
    return [name for name, present in (
        ("EventCameraDrivers", eci.has_event_camera_drivers()),
        ("NeuromorphicDrivers", eci.has_neuromorphic_drivers())) if present]


def list_metavision(*, driver: Any = None) -> list[str]:
    """Serial numbers of the Prophesee cameras OpenEB can see."""
    hal = driver if driver is not None else import_driver("metavision_hal", OPENEB_HINT)
    return [str(s) for s in hal.DeviceDiscovery.list()]


def list_dv_cameras(*, driver: Any = None) -> list[str]:
    """Serial numbers of the iniVation cameras dv-processing can see."""
    dv = driver if driver is not None else import_driver("dv_processing", CAMERA_EXTRA)
    return [str(d.serialNumber) for d in dv.io.camera.discover()]


def open_metavision(location: str, *, driver: Any = None, **opts: Any) -> LiveSource:
    """Open ``metavision://[SERIAL]?format=evt3&...`` (empty serial: the first camera).

    ``format`` overrides the encoding the device reports ("evt2" | "evt21" | "evt3", may
    carry ";endianness=legacy"); the rest are ``LiveOptions``. ``driver``: the metavision_hal
    module to use (default: ``import metavision_hal``). Raises ImportError without OpenEB,
    CameraError when no camera opens, EventFormatError for an unknown encoding.
    """
    live, rest = LiveOptions.split(opts)
    _reject_unknown(rest, {"format"}, "metavision")
    hal = driver if driver is not None else import_driver("metavision_hal", OPENEB_HINT)
    serial = location.strip().strip("/")
    uri = f"metavision://{serial}"
    try:
        device = hal.DeviceDiscovery.open(serial)
    except Exception as exc:
        raise CameraError(f"{uri}: no Prophesee camera opened: {exc}") from exc
    if device is None:
        raise CameraError(f"{uri}: no Prophesee camera found"
                          + (f" with serial {serial!r}" if serial else ""))
    return LiveSource(HalLink(device, uri, rest.get("format")), uri, live)


__all__ = [
    "CAMERA_EXTRA", "DV_DTYPE", "OPENEB_HINT", "CameraError", "DeviceLink", "DvLink",
    "FaeryLink", "dv_to_events",
    "HalLink", "LiveOptions", "LiveSource", "import_driver", "list_dv_cameras",
    "list_faery_backends", "list_metavision", "open_dv", "open_faery", "open_metavision",
    "raw_bytes",
]
