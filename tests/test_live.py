"""Live sources: fake faery / dv-processing / OpenEB HAL devices, and a real DV network stream.

The fakes copy the surface of the driver APIs (faery ``events_stream_from_camera`` streams,
dv-processing ``NetworkReader`` / camera inputs, OpenEB ``DeviceDiscovery`` devices with
their facilities) and are passed as ``driver=``; the real test streams a recording through
a ``dv.io.NetworkWriter`` in a child process on loopback. No physical camera is used.
"""

from __future__ import annotations

import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from augury.adapters import open_source
from augury.adapters.evt import read_raw_header
from augury.adapters.evt_write import write_raw
from augury.adapters.live import (
    DV_DTYPE,
    CameraError,
    LiveSource,
    dv_to_events,
    list_dv_cameras,
    list_faery_backends,
    list_metavision,
    open_dv,
    open_faery,
    open_metavision,
    raw_bytes,
)
from augury.events import (
    EventFormatError,
    SensorGeometry,
    concat_records,
    make_events,
    to_events,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DVX = DATA / "inivation" / "dvxplorer_sample.aedat4"
WAIT_S = 10.0  # upper bound on any wait; tests finish as soon as the data is in
FAERY_DTYPE = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])


def _events(n: int, w: int, h: int, seed: int = 0, t0_us: int = 1_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = t0_us + np.sort(rng.integers(0, 50_000, n))
    return make_events(t, rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n))


def _pieces(ev: np.ndarray, k: int) -> list[np.ndarray]:
    return np.array_split(ev, k)


def _drain(src: LiveSource) -> np.ndarray:
    """Every validated event until the source ends (bounded by its idle timeout)."""
    return concat_records([c.events for c in src._validated()])


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.size == b.size
    for f in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(a[f].astype(np.int64), b[f].astype(np.int64), err_msg=f)


# -------------------------------------------------------------------------------------------
# fake faery


class FakeFaeryStream:
    """Like faery's camera streams: ``dimensions()`` and an iterator of (t, x, y, on) arrays;
    ends after its packets (a camera unplugged) or raises ``fail`` after them."""

    def __init__(self, packets: list[np.ndarray], size: tuple[int, int],
                 fail: Exception | None = None, block: threading.Event | None = None) -> None:
        self.packets = packets
        self.size = size
        self.fail = fail
        self.block = block
        self.dropped_events = 0

    def dimensions(self) -> tuple[int, int]:
        return self.size

    def __iter__(self) -> Iterator[np.ndarray]:
        for p in self.packets:
            self.dropped_events += 3
            yield p
        if self.block is not None:
            self.block.wait(WAIT_S)
        if self.fail is not None:
            raise self.fail


def _faery_module(stream: FakeFaeryStream, calls: list[dict[str, Any]]) -> SimpleNamespace:
    def events_stream_from_camera(driver: Any = None, manufacturer: Any = None,
                                  buffer_size: int = 1024) -> FakeFaeryStream:
        calls.append({"driver": driver, "manufacturer": manufacturer, "buffer_size": buffer_size})
        return stream
    return SimpleNamespace(events_stream_from_camera=events_stream_from_camera)


def _as_faery(ev: np.ndarray) -> np.ndarray:
    out = np.empty(ev.size, FAERY_DTYPE)
    out["t"], out["x"], out["y"], out["on"] = ev["t"], ev["x"], ev["y"], ev["p"] == 1
    return out


def test_faery_camera_stops_mid_stream_and_source_ends_cleanly() -> None:
    ev = _events(5000, 346, 260)
    stream = FakeFaeryStream([_as_faery(p) for p in _pieces(ev, 7)], (346, 260))
    calls: list[dict[str, Any]] = []
    with open_faery("prophesee", driver=_faery_module(stream, calls), buffer_size="512",
                    idle_timeout_s=WAIT_S) as src:
        assert src.geometry == SensorGeometry(346, 260)
        assert src.format == "faery camera"
        got = _drain(src)
        assert not src.thread_alive  # the driver's end ended the reader thread
        assert src.driver_dropped == 21  # the driver's own counter, passed through
        assert src.biases() == {}
        with pytest.raises(NotImplementedError):
            src.set_erc_rate(1_000_000)
    _same(got, ev)
    assert src.totals.read == ev.size and src.totals.dropped == 0
    assert calls == [{"driver": "Auto", "manufacturer": "Prophesee", "buffer_size": 512}]


def test_faery_driver_error_reaches_the_consumer_after_the_data() -> None:
    ev = _events(1000, 64, 48)
    stream = FakeFaeryStream([_as_faery(ev)], (64, 48), fail=OSError("USB transfer failed"))
    src = open_source("faery://", driver=_faery_module(stream, []), idle_timeout_s=WAIT_S)
    got = []
    with pytest.raises(CameraError, match="faery://.*USB transfer failed") as info:
        for chunk in src.chunks():
            got.append(chunk.events)
    assert isinstance(info.value.__cause__, OSError)
    _same(concat_records(got), ev)
    src.close()
    assert not src.thread_alive


def test_close_is_bounded_when_the_driver_blocks() -> None:
    release = threading.Event()
    stream = FakeFaeryStream([], (32, 32), block=release)
    src = open_faery("", driver=_faery_module(stream, []), join_timeout_s=0.2)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 2.0
    assert src.thread_alive  # documented: a driver blocked inside its own call is reported
    assert src.link.stream is stream  # ... and not released under the running thread
    release.set()
    src._thread.join(WAIT_S)
    assert not src.thread_alive


def test_faery_rejects_bad_locations_options_and_missing_cameras() -> None:
    mod = _faery_module(FakeFaeryStream([], (8, 8)), [])
    with pytest.raises(ValueError, match="inivation"):
        open_faery("canon", driver=mod)
    with pytest.raises(ValueError, match="unknown faery:// option"):
        open_faery("", driver=mod, fps=30)

    def no_camera(**kwargs: Any) -> Any:
        raise ValueError("No Event Camera found:", None)  # what faery 0.7.1 raises
    with pytest.raises(CameraError, match="faery://inivation: no camera opened"):
        open_faery("inivation", driver=SimpleNamespace(events_stream_from_camera=no_camera))
    eci = SimpleNamespace(has_event_camera_drivers=lambda: False,
                          has_neuromorphic_drivers=lambda: True)
    assert list_faery_backends(driver=SimpleNamespace(event_camera_input=eci)) == [
        "NeuromorphicDrivers"]


# -------------------------------------------------------------------------------------------
# fake dv-processing


class FakeStore:
    """Like dv.EventStore: len() and numpy() with dv's dtype."""

    def __init__(self, ev: np.ndarray) -> None:
        self.arr = np.empty(ev.size, DV_DTYPE)
        self.arr["timestamp"], self.arr["x"], self.arr["y"] = ev["t"], ev["x"], ev["y"]
        self.arr["polarity"] = ev["p"]

    def __len__(self) -> int:
        return int(self.arr.size)

    def numpy(self) -> np.ndarray:
        return self.arr


class FakeDvInput:
    """Like dv.io.NetworkReader / a dv camera: non-blocking ``getNextEventBatch`` (None when
    nothing is there), ``isRunning()`` false once the peer is gone, even if batches that
    arrived before are still queued (``end_after`` batches delivered)."""

    def __init__(self, stores: list[FakeStore | None], resolution: Any = (320, 240), *,
                 end_after: int | None = None, fail: Exception | None = None) -> None:
        self.queue = list(stores)
        self.resolution = resolution
        self.end_after = len([s for s in stores if s is not None]) if end_after is None \
            else end_after
        self.delivered = 0
        self.fail = fail
        self.dropped_events = 11
        self.on, self.off = 25, 30

    def getEventResolution(self) -> Any:  # noqa: N802 (the driver's names)
        return self.resolution

    def getNextEventBatch(self) -> FakeStore | None:  # noqa: N802
        if not self.queue:
            if self.fail is not None:
                raise self.fail
            return None
        store = self.queue.pop(0)
        self.delivered += store is not None
        return store

    def isRunning(self) -> bool:  # noqa: N802
        return self.delivered < self.end_after

    def getContrastThresholdOn(self) -> int:  # noqa: N802
        return self.on

    def getContrastThresholdOff(self) -> int:  # noqa: N802
        return self.off

    def setContrastThresholdOn(self, v: int) -> None:  # noqa: N802
        self.on = v


def _dv_module(reader: Any = None, camera: Any = None,
               connect_error: Exception | None = None) -> SimpleNamespace:
    opened: list[Any] = []

    def network_reader(host: str, port: int) -> Any:
        if connect_error is not None:
            raise connect_error
        opened.append((host, port))
        return reader

    def camera_open(*serial: str) -> Any:
        opened.append(serial)
        return camera

    discover = [SimpleNamespace(serialNumber="DXA00093")]
    cam = SimpleNamespace(open=camera_open, discover=lambda: discover)
    return SimpleNamespace(io=SimpleNamespace(NetworkReader=network_reader, camera=cam),
                           opened=opened)


def test_dv_network_stream_end_drains_batches_queued_before_the_end() -> None:
    ev = _events(6000, 320, 240)
    parts = _pieces(ev, 6)
    # batches interleaved with "nothing yet", and the peer gone after 4 of 6 batches
    stores: list[FakeStore | None] = []
    for p in parts:
        stores += [None, FakeStore(p)]
    reader = FakeDvInput(stores, end_after=4)
    mod = _dv_module(reader)
    with open_source("dv://127.0.0.1:7777", driver=mod, idle_timeout_s=WAIT_S) as src:
        assert src.format == "DV network" and src.geometry == SensorGeometry(320, 240)
        got = _drain(src)
        assert not src.thread_alive
    _same(got, ev)
    assert mod.opened == [("127.0.0.1", 7777)]
    assert src.link.reader is None  # released once the thread ended


def test_dv_camera_biases_and_driver_drop_counter() -> None:
    ev = _events(500, 640, 480)
    cam = FakeDvInput([FakeStore(ev)], (640, 480))
    mod = _dv_module(camera=cam)
    with open_dv("camera/DXA00093", driver=mod, idle_timeout_s=WAIT_S) as src:
        assert src.format == "DV camera" and src.uri == "dv://camera/DXA00093"
        assert src.biases() == {"contrast_threshold_on": 25, "contrast_threshold_off": 30}
        src.set_bias("contrast_threshold_on", 40)
        assert cam.on == 40
        with pytest.raises(NotImplementedError, match="contrast_threshold_off"):
            src.set_bias("contrast_threshold_off", 20)  # this camera has no setter for it
        with pytest.raises(NotImplementedError):
            src.set_erc_rate(10_000_000)
        assert src.driver_dropped == 11
        _same(_drain(src), ev)
    assert mod.opened == [("DXA00093",)]
    assert list_dv_cameras(driver=mod) == ["DXA00093"]


def test_dv_driver_error_and_bad_streams() -> None:
    ev = _events(300, 320, 240)
    reader = FakeDvInput([FakeStore(ev)], end_after=10, fail=RuntimeError("socket reset"))
    src = open_dv("localhost:4000", driver=_dv_module(reader), idle_timeout_s=WAIT_S)
    got = []
    with pytest.raises(CameraError, match="dv://localhost:4000.*socket reset"):
        for c in src.chunks():
            got.append(c.events)
    src.close()
    _same(concat_records(got), ev)
    with pytest.raises(EventFormatError, match="dv://h:1.*no event resolution"):
        open_dv("h:1", driver=_dv_module(FakeDvInput([], resolution=None)))
    with pytest.raises(CameraError, match="cannot connect.*refused"):
        open_dv("h:2", driver=_dv_module(connect_error=RuntimeError("refused")))

    def no_camera(*serial: str) -> Any:
        raise RuntimeError("no compatible camera discovered")
    mod = _dv_module()
    mod.io.camera.open = no_camera
    with pytest.raises(CameraError, match="dv://camera/X: no iniVation camera opened"):
        open_dv("camera/X", driver=mod)
    for bad in ("h", "h:0", "h:99999", ":5"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            open_dv(bad, driver=_dv_module())


def test_dv_to_events_matches_the_generic_converter() -> None:
    ev = _events(3000, 640, 480, seed=5)
    arr = FakeStore(ev).numpy()
    assert arr.dtype.itemsize == 16  # dv-processing's padded records
    _same(dv_to_events(arr), to_events(arr))
    _same(dv_to_events(arr), ev)
    assert dv_to_events(arr[:0]).size == 0
    bad = arr.copy()
    bad["y"][17] = -3
    with pytest.raises(EventFormatError, match=r"dv://x: event 17: negative t, x or y"):
        dv_to_events(bad, source="dv://x")


def test_ring_overflow_drops_oldest_and_counts_every_event() -> None:
    ev = _events(10_000, 320, 240)
    stores = [FakeStore(p) for p in _pieces(ev, 20)]  # 500 events each
    reader = FakeDvInput(stores)
    src = open_dv("h:9", driver=_dv_module(reader), capacity_events=1200,
                  idle_timeout_s=WAIT_S)
    src._thread.join(WAIT_S)  # let the driver run ahead of a consumer that has not started
    assert not src.thread_alive
    got = _drain(src)
    assert src.dropped_events == ev.size - got.size > 0
    _same(got, ev[ev.size - got.size:])  # the freshest events survive
    assert src.totals.read == ev.size and src.totals.dropped == src.dropped_events
    src.close()


def test_block_overflow_loses_nothing() -> None:
    ev = _events(10_000, 320, 240)
    reader = FakeDvInput([FakeStore(p) for p in _pieces(ev, 20)])
    with open_dv("h:9", driver=_dv_module(reader), capacity_events=1200, overflow="block",
                 idle_timeout_s=WAIT_S) as src:
        _same(_drain(src), ev)
        assert src.dropped_events == 0


# -------------------------------------------------------------------------------------------
# fake OpenEB metavision_hal


class FakeEventsStream:
    """Like HAL's I_EventsStream: poll_buffer() -> 1 (a buffer), 0 (none yet), -1 (stopped)."""

    def __init__(self, buffers: list[Any], fail: Exception | None = None) -> None:
        self.buffers = list(buffers)
        self.fail = fail
        self.latest: Any = None
        self.started = self.stopped = 0
        self.polls = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1

    def poll_buffer(self) -> int:
        self.polls += 1
        if self.polls % 3 == 0:
            return 0  # nothing yet
        if not self.buffers:
            if self.fail is not None:
                raise self.fail
            return -1
        self.latest = self.buffers.pop(0)
        return 1

    def get_latest_raw_data(self) -> Any:
        return self.latest


class FakeBiases:
    def __init__(self) -> None:
        self.values = {"bias_diff_on": 102, "bias_diff_off": 73}

    def get_all_biases(self) -> dict[str, int]:
        return dict(self.values)

    def set(self, name: str, value: int) -> bool:
        if name not in self.values:
            return False
        self.values[name] = value
        return True


class FakeErc:
    def __init__(self) -> None:
        self.enabled = False
        self.rate = 0

    def enable(self, b: bool) -> None:
        self.enabled = b

    def set_cd_event_rate(self, events_per_sec: int) -> None:
        self.rate = events_per_sec


class FakeDevice:
    """Like a HAL Device: get_i_* facility getters (None when the device lacks one)."""

    def __init__(self, stream: FakeEventsStream, size: tuple[int, int], fmt: str | None,
                 erc: bool = True) -> None:
        self.stream = stream
        self.size = size
        self.fmt = fmt
        self.ll_biases = FakeBiases()
        self.erc = FakeErc() if erc else None
        self.dropped_events = 0

    def get_i_geometry(self) -> Any:
        w, h = self.size
        return SimpleNamespace(get_width=lambda: w, get_height=lambda: h)

    def get_i_events_stream(self) -> FakeEventsStream:
        return self.stream

    def get_i_hw_identification(self) -> Any:
        if self.fmt is None:
            return SimpleNamespace()
        return SimpleNamespace(get_current_data_encoding_format=lambda: self.fmt)

    def get_i_ll_biases(self) -> FakeBiases:
        return self.ll_biases

    def get_i_erc_module(self) -> FakeErc | None:
        return self.erc


def _hal_module(device: FakeDevice | None) -> SimpleNamespace:
    opened: list[str] = []

    def open_(serial: str) -> FakeDevice | None:
        opened.append(serial)
        return device
    discovery = SimpleNamespace(open=open_, list=lambda: ["00050423"])
    return SimpleNamespace(DeviceDiscovery=discovery, opened=opened)


class BoundVector(list):
    """Like OpenEB's RawDataBuffer (a bound std::vector<uint8>, no buffer protocol)."""


def _raw_buffers(tmp_path: Path, ev: np.ndarray, geom: SensorGeometry, fmt: str,
                 seed: int = 1) -> list[Any]:
    """The data part of a .raw file written by augury, cut at random byte offsets (splitting
    words), alternating numpy arrays and bound-vector-like buffers."""
    path = tmp_path / f"x_{fmt}.raw"
    write_raw(path, ev, geom, fmt)
    data = path.read_bytes()[read_raw_header(path).data_offset:]
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(data)), 12, replace=False))
    parts = np.split(np.frombuffer(data, np.uint8), cuts)
    return [p if i % 2 else BoundVector(p.tolist()) for i, p in enumerate(parts)]


@pytest.mark.parametrize("fmt", ["evt3", "evt2"])
def test_metavision_raw_buffers_decode_exactly(tmp_path: Path, fmt: str) -> None:
    geom = SensorGeometry(640, 480)
    ev = _events(20_000, 640, 480, seed=3)
    stream = FakeEventsStream(_raw_buffers(tmp_path, ev, geom, fmt))
    device = FakeDevice(stream, (640, 480), "EVT3;height=480;width=640" if fmt == "evt3"
                        else None)
    mod = _hal_module(device)
    opts = {} if fmt == "evt3" else {"format": "EVT 2.0"}  # a device that does not say
    with open_source("metavision://", driver=mod, idle_timeout_s=WAIT_S, **opts) as src:
        assert src.format == "Metavision HAL" and src.geometry == geom
        got = _drain(src)
        assert not src.thread_alive
    _same(got, ev)
    assert stream.started == 1 and stream.stopped == 1  # the driver's stream is stopped
    assert mod.opened == [""]
    assert src.totals.read == ev.size and src.totals.malformed == 0


def test_metavision_controls_and_driver_error(tmp_path: Path) -> None:
    geom = SensorGeometry(320, 320)
    ev = _events(2000, 320, 320)
    stream = FakeEventsStream(_raw_buffers(tmp_path, ev, geom, "evt3"),
                              fail=RuntimeError("USB device lost"))
    device = FakeDevice(stream, (320, 320), "EVT3")
    device.dropped_events = 42
    src = open_metavision("00050423", driver=_hal_module(device), idle_timeout_s=WAIT_S)
    assert src.biases() == {"bias_diff_on": 102, "bias_diff_off": 73}
    src.set_bias("bias_diff_on", 110)
    assert device.ll_biases.values["bias_diff_on"] == 110
    with pytest.raises(ValueError, match="refused bias"):
        src.set_bias("bias_nope", 1)
    src.set_erc_rate(20_000_000)
    assert device.erc is not None and device.erc.enabled and device.erc.rate == 20_000_000
    with pytest.raises(ValueError):
        src.set_erc_rate(0)
    assert src.driver_dropped == 42
    got = []
    with pytest.raises(CameraError, match="metavision://00050423.*USB device lost"):
        for c in src.chunks():
            got.append(c.events)
    src.close()
    assert not src.thread_alive and stream.stopped == 1
    _same(concat_records(got), ev)


def test_metavision_missing_facilities_and_formats() -> None:
    stream = FakeEventsStream([])
    with pytest.raises(EventFormatError, match="pass format="):
        open_metavision("", driver=_hal_module(FakeDevice(stream, (64, 64), None)))
    with pytest.raises(EventFormatError, match="unknown EVT format"):
        open_metavision("", driver=_hal_module(FakeDevice(stream, (64, 64), "EVT4")))
    with pytest.raises(CameraError, match="no Prophesee camera found with serial 'X1'"):
        open_metavision("X1", driver=_hal_module(None))
    failing = _hal_module(None)
    failing.DeviceDiscovery.open = lambda serial: (_ for _ in ()).throw(
        RuntimeError("HalException: camera busy"))
    with pytest.raises(CameraError, match="metavision://: no Prophesee camera opened.*busy"):
        open_metavision("", driver=failing)
    src = open_metavision("", driver=_hal_module(FakeDevice(stream, (64, 64), "EVT21",
                                                            erc=False)))
    with pytest.raises(NotImplementedError, match="event-rate"):
        src.set_erc_rate(1000)
    src.close()
    assert list_metavision(driver=_hal_module(None)) == ["00050423"]


def test_metavision_incomplete_last_word_is_counted_malformed(tmp_path: Path) -> None:
    geom = SensorGeometry(64, 64)
    ev = _events(300, 64, 64)
    buffers = _raw_buffers(tmp_path, ev, geom, "evt2")
    buffers.append(np.array([0x01, 0x02], np.uint8))  # half of a 4-byte EVT 2.0 word
    device = FakeDevice(FakeEventsStream(buffers), (64, 64), "EVT2")
    with open_metavision("", driver=_hal_module(device), idle_timeout_s=WAIT_S) as src:
        _same(_drain(src), ev)
    assert src.totals.malformed == 1 and src.totals.read == ev.size


def test_raw_bytes_accepts_every_buffer_kind() -> None:
    data = np.arange(10, dtype=np.uint8)
    for buf in (data, bytes(data), bytearray(data), BoundVector(data.tolist())):
        np.testing.assert_array_equal(raw_bytes(buf), data)


# -------------------------------------------------------------------------------------------
# missing driver modules


@pytest.mark.parametrize(("uri", "module", "hint"), [
    ("faery://", "faery", r"pip install 'augury\[camera\]'"),
    ("dv://camera", "dv_processing", r"pip install 'augury\[camera\]'"),
    ("dv://127.0.0.1:7777", "dv_processing", r"pip install 'augury\[camera\]'"),
    ("metavision://", "metavision_hal", "install OpenEB"),
])
def test_missing_driver_names_what_to_install(monkeypatch: pytest.MonkeyPatch, uri: str,
                                              module: str, hint: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=hint):
        open_source(uri)


def test_core_package_does_not_import_camera_drivers() -> None:
    code = ("import sys, augury, augury.adapters, augury.adapters.live; "
            "print([m for m in ('faery', 'dv_processing', 'metavision_hal') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------------
# a real DV network stream: dv.io.NetworkWriter (child process) -> dv://127.0.0.1:PORT

# The writer runs in a child process: in one process, destroying a NetworkWriter while a
# NetworkReader is still connected deadlocks inside dv-processing 2.0.4. A writer that exits
# right after its queue is empty loses the data still in flight (the reader sees the end
# first), so in "exit" mode the child waits for the parent to have every event, then exits.
_WRITER = r"""
import os, select, sys, time
import dv_processing as dv
path, mode = sys.argv[1], sys.argv[2]
rec = dv.io.MonoCameraRecording(path)
stores = []
while True:
    b = rec.getNextEventBatch()
    if b is None:
        break
    stores.append(b)
stream = dv.io.Stream.EventStream(0, "events", rec.getCameraName(), rec.getEventResolution())
writer = dv.io.NetworkWriter("127.0.0.1", int(sys.argv[3]), stream)
print("ready", flush=True)

def until(cond):
    deadline = time.monotonic() + 20
    while not cond():
        if time.monotonic() > deadline:
            print("timeout", flush=True)
            os._exit(3)
        time.sleep(0.001)

until(lambda: writer.getClientCount() >= 1)
for s in stores:
    until(lambda: writer.getQueuedPacketCount() < 64)
    writer.writeEvents(s)
until(lambda: writer.getQueuedPacketCount() == 0)
print("sent", flush=True)
if mode == "wait_disconnect":
    until(lambda: writer.getClientCount() == 0)
    print("disconnected", flush=True)
else:  # exit when the parent says so (data still in flight would be lost: see above)
    select.select([sys.stdin], [], [], 20)
os._exit(0)  # skip the writer's destructor: the socket closes with the process
"""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_writer(mode: str) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(DVX), mode, str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().strip() if ready else ""
    if line != "ready":
        proc.kill()
        proc.wait(WAIT_S)
        pytest.fail(f"the dv NetworkWriter child did not start (got {line!r})")
    return proc, port


@pytest.fixture(scope="module")
def dv_expected() -> np.ndarray:
    dv = pytest.importorskip("dv_processing", reason="dv-processing is not installed")
    if not DVX.is_file():
        pytest.skip(f"real recording not found at {DVX} (../shared/data is absent)")
    rec = dv.io.MonoCameraRecording(str(DVX))
    parts = []
    while (b := rec.getNextEventBatch()) is not None:
        parts.append(to_events(b.numpy()))
    return concat_records(parts)


def test_real_dv_network_stream_every_event_arrives(dv_expected: np.ndarray) -> None:
    assert dv_expected.size == 111_954
    proc, port = _start_writer("exit")
    try:
        src = open_source(f"dv://127.0.0.1:{port}")  # no idle timeout: the peer ends it
        watchdog = threading.Timer(30, src.close)  # bounds the test if the end is missed
        watchdog.start()
        try:
            assert src.geometry == SensorGeometry(320, 240) and src.format == "DV network"
            parts = []
            n = 0
            chunks = src._validated()
            for chunk in chunks:  # until every event is in, with the writer still alive
                parts.append(chunk.events)
                n += chunk.events.size
                if n >= dv_expected.size:
                    break
            assert proc.stdin is not None
            proc.stdin.write("exit\n")  # the writer goes away: the source must end by itself
            proc.stdin.flush()
            parts += [c.events for c in chunks]
            got = concat_records(parts)
        finally:
            watchdog.cancel()
        assert src._stop.is_set() is False  # ended by the writer going away, not close()
        assert not src.thread_alive
        src.close()
        assert proc.wait(WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)
    _same(got, dv_expected)
    assert src.totals.read == 111_954 and src.totals.dropped == 0


def test_real_dv_network_close_disconnects_from_the_writer(dv_expected: np.ndarray) -> None:
    proc, port = _start_writer("wait_disconnect")
    try:
        with open_dv(f"127.0.0.1:{port}", idle_timeout_s=WAIT_S) as src:
            n = 0
            for chunk in src.chunks():
                n += chunk.events.size
                if n >= dv_expected.size:
                    break
        assert n == dv_expected.size
        assert not src.thread_alive
        out, _ = proc.communicate(timeout=WAIT_S + 20)
        assert proc.returncode == 0 and out.split() == ["sent", "disconnected"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)


def test_dv_network_connection_refused_is_a_clear_error() -> None:
    pytest.importorskip("dv_processing", reason="dv-processing is not installed")
    port = _free_port()  # nobody listens there
    with pytest.raises(CameraError, match=f"dv://127.0.0.1:{port}: cannot connect"):
        open_source(f"dv://127.0.0.1:{port}")

