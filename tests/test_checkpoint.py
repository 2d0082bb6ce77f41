"""Atomic checkpoints: bit-exact round trip, corrupt files skipped, pruning, crash safety."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from augury.checkpoint import (
    CheckpointError,
    CheckpointManager,
    NonFiniteStateError,
    list_checkpoints,
    load_latest,
    non_finite_array,
    prune,
    read_checkpoint,
    save_checkpoint,
)


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal((7, 5)).astype(np.float32)
    f64 = rng.standard_normal(11)
    # NaNs with distinct payloads (quiet and signalling patterns) and a negative zero
    f32.view(np.uint32)[0, :3] = [0x7FC00001, 0x7F800123, 0xFFC0BEEF]
    f64.view(np.uint64)[:2] = [0x7FF8000000000ABC, 0xFFF0000000000001]
    f64[2] = -0.0
    return {
        "w_l1": f32,
        "mu": f64,
        "counts": rng.integers(-(2**62), 2**62, size=(3, 4), dtype=np.int64),
        "mask": rng.integers(0, 2, size=9).astype(bool),
        "scalar": np.array(seed, dtype=np.uint16),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "big_endian": np.arange(5, dtype=">i4"),
    }


def _assert_bit_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, a in want.items():
        b = got[name]
        assert b.dtype == a.dtype and b.shape == a.shape, name
        assert np.ascontiguousarray(b).tobytes() == np.ascontiguousarray(a).tobytes(), name


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = _state(3)
    meta = {"stream_time_us": 123_456_789, "learning": True, "layers": ["l1", "l2"],
            "eta": np.float32(0.25), "nested": {"1": 2, "b": [1.5, None]}}
    path = save_checkpoint(tmp_path, state, meta, created_unix_s=1_700_000_000.5)
    assert path.name == "ckpt-000000000.npz"
    loaded = load_latest(tmp_path)
    assert loaded is not None
    arrays, got_meta, got_path = loaded
    _assert_bit_exact(arrays, state)
    assert got_meta == {**meta, "eta": 0.25}
    assert got_path == path
    with np.load(path, allow_pickle=False) as z:  # a plain npz any NumPy can read
        assert set(z.files) == {*state, "__meta__"}


def test_names_sort_by_sequence_and_newest_wins(tmp_path: Path) -> None:
    for i in range(12):
        save_checkpoint(tmp_path, {"x": np.array([i])}, {"i": i})
    names = [p.name for _, p in list_checkpoints(tmp_path)]
    assert names == sorted(names) and names[-1] == "ckpt-000000011.npz"
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.meta == {"i": 11}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _flip_payload_bit(path: Path) -> None:
    """Flip one bit inside the stored bytes of array 'w_l1' (not in zip metadata)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("w_l1.npy")
    data = bytearray(path.read_bytes())
    # local header: 30 bytes + name + extra; then the .npy (header ~128 bytes, then data)
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size - 5] ^= 0x10
    path.write_bytes(bytes(data))


def _rewrite_payload_keeping_crc(path: Path) -> None:
    """Change an array's value and rebuild the zip (valid CRCs): only the SHA-256 sees it."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    raw = bytearray(members["mu.npy"])
    raw[-1] ^= 0x01
    members["mu.npy"] = bytes(raw)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("damage", [_truncate, _flip_payload_bit, _rewrite_payload_keeping_crc,
                                    lambda p: p.write_bytes(b""),
                                    lambda p: p.write_bytes(os.urandom(4096))])
def test_damaged_newest_is_skipped_and_previous_loads(tmp_path: Path, damage) -> None:
    good = save_checkpoint(tmp_path, _state(1), {"n": 1})
    bad = save_checkpoint(tmp_path, _state(2), {"n": 2})
    damage(bad)
    with pytest.raises(CheckpointError, match=bad.name):
        read_checkpoint(bad)
    skipped: list[tuple[Path, str]] = []
    loaded = load_latest(tmp_path, on_skip=lambda p, why: skipped.append((p, why)))
    assert loaded is not None and loaded.path == good
    _assert_bit_exact(loaded.arrays, _state(1))
    assert [p for p, _ in skipped] == [bad]


def test_all_damaged_or_empty_gives_none(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "missing") is None
    assert load_latest(tmp_path) is None
    p = save_checkpoint(tmp_path, _state(1), {})
    _truncate(p)
    assert load_latest(tmp_path) is None


def test_leftover_temp_file_is_ignored_and_pruned(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path, _state(1), {"n": 1})
    # what a writer killed mid-write leaves behind (pid 1 is never this process)
    leftover = tmp_path / ".ckpt-000000001.npz.tmp-1-deadbeef"
    leftover.write_bytes(good.read_bytes()[:100])
    assert [p for _, p in list_checkpoints(tmp_path)] == [good]
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.path == good
    assert save_checkpoint(tmp_path, _state(2), {}).name == "ckpt-000000001.npz"
    removed = prune(tmp_path, keep=5)
    assert removed == [leftover] and not leftover.exists()


def test_prune_keeps_the_k_newest(tmp_path: Path) -> None:
    for i in range(7):
        save_checkpoint(tmp_path, {"x": np.array([i])}, {})
    removed = prune(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == [f"ckpt-{i:09d}.npz" for i in range(4)]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5, 6]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune(tmp_path, keep=0)


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [({"__meta__": np.zeros(1)}, "array name '__meta__'"),
     ({"a/b": np.zeros(1)}, "array name 'a/b'"),
     ({"obj": np.array([object()])}, "object dtype")],
)
def test_bad_input_is_refused_without_leaving_files(tmp_path: Path, arrays, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        save_checkpoint(tmp_path, arrays, {})
    assert list(tmp_path.iterdir()) == []


def test_meta_json_cannot_carry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot store a set"):
        save_checkpoint(tmp_path, {"a": np.zeros(1)}, {"s": {1, 2}})
    assert list(tmp_path.iterdir()) == []


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_manager_saves_on_schedule_and_prunes(tmp_path: Path) -> None:
    clock = FakeClock()
    mgr = CheckpointManager(tmp_path, every_s=10.0, keep=2, clock=clock)
    calls = []

    def get_state():
        calls.append(clock.t)
        return {"x": np.array([clock.t])}, {"t": clock.t}

    assert mgr.maybe_save(get_state) is None and calls == []
    saved = []
    for t in np.arange(1.0, 46.0, 1.0):
        clock.t = float(t)
        p = mgr.maybe_save(get_state)
        if p is not None:
            saved.append(p.name)
    assert calls == [10.0, 20.0, 30.0, 40.0]
    assert saved == [f"ckpt-{i:09d}.npz" for i in range(4)]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    clock.t = 41.0
    assert mgr.save_now(get_state).name == "ckpt-000000004.npz"
    loaded = mgr.load_latest()
    assert loaded is not None and loaded.meta == {"t": 41.0}
    # a new manager over the same directory continues the numbering
    assert CheckpointManager(tmp_path, 1.0, 2, clock=clock).next_seq == 5


def test_manager_counts_skipped_and_failed_saves(tmp_path: Path) -> None:
    clock = FakeClock()
    mgr = CheckpointManager(tmp_path / "ck", every_s=1.0, keep=3, clock=clock)
    clock.t = 1.0
    mgr.maybe_save(lambda: ({"x": np.zeros(3)}, {}))
    clock.t = 2.0
    newest = mgr.maybe_save(lambda: ({"x": np.ones(3)}, {}))
    assert newest is not None
    _truncate(newest)
    loaded = mgr.load_latest()
    assert loaded is not None and loaded.arrays["x"].sum() == 0 and mgr.skipped == 1
    shutil.rmtree(tmp_path / "ck")
    (tmp_path / "ck").write_text("a file where the directory was")  # every write now fails
    clock.t = 3.0
    assert mgr.maybe_save(lambda: ({"x": np.zeros(3)}, {})) is None
    assert mgr.failed == 1
    with pytest.raises(OSError):
        mgr.save_now(lambda: ({"x": np.zeros(3)}, {}))


def test_background_saves_never_wait_for_the_disk(tmp_path: Path) -> None:
    clock = FakeClock()
    release = threading.Event()
    started = threading.Event()

    def slow_disk(*args, **kwargs) -> Path:
        started.set()
        if not release.wait(10):
            raise OSError("test: never released")
        return save_checkpoint(*args, **kwargs)

    mgr = CheckpointManager(tmp_path, every_s=1.0, keep=5, clock=clock, background=True,
                            writer=slow_disk)
    clock.t = 1.0
    path = mgr.maybe_save(lambda: ({"x": np.arange(3)}, {"n": 0}))
    # maybe_save returned although the write cannot finish before release.set()
    assert started.wait(10)
    assert path == tmp_path / "ckpt-000000000.npz" and not path.exists()
    clock.t = 2.0
    assert mgr.maybe_save(lambda: pytest.fail("state taken while busy")) is None
    assert mgr.busy == 1
    release.set()
    assert mgr.wait(10) and path.exists() and mgr.saved == 1
    clock.t = 3.0
    mgr.maybe_save(lambda: ({"x": np.arange(4)}, {"n": 1}))
    loaded = mgr.load_latest()  # waits for the pending write
    assert loaded is not None and loaded.meta == {"n": 1} and loaded.arrays["x"].size == 4


def test_background_write_failures_are_counted(tmp_path: Path) -> None:
    def broken_disk(*args, **kwargs) -> Path:
        raise OSError("test: disk full")

    clock = FakeClock()
    mgr = CheckpointManager(tmp_path, every_s=1.0, keep=5, clock=clock, background=True,
                            writer=broken_disk)
    clock.t = 1.0
    assert mgr.maybe_save(lambda: ({"x": np.zeros(2)}, {})) is not None
    assert mgr.wait(10)
    assert mgr.failed == 1 and mgr.saved == 0 and list_checkpoints(tmp_path) == []


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from augury.checkpoint import save_checkpoint, prune
    d = sys.argv[1]
    i = 0
    while True:
        big = np.full(4_000_000, i, dtype=np.float64)  # 32 MB
        save_checkpoint(d, {"big": big, "i": np.array(i)}, {"i": i}, seq=i)
        prune(d, keep=2)
        print(i, flush=True)
        i += 1
""")


def _wait_for_temp_file(d: Path, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.name.startswith(".ckpt-") for p in d.iterdir()):
            return True
        time.sleep(0.002)  # polling the file system, not synchronising by sleeping
    return False


def _kill_inside_a_write(proc: subprocess.Popen, d: Path, rng: random.Random) -> None:
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # one complete checkpoint exists
        assert first.strip() == "0", "writer died before its first checkpoint"
        assert _wait_for_temp_file(d), "writer never started a second checkpoint"
        time.sleep(rng.uniform(0.0, 0.03))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """A writer saving 32 MB checkpoints in a loop is SIGKILLed at a random moment inside a
    write (0-30 ms after its temp file appears; a write takes ~100 ms here). Note: SIGKILL
    does not lose the page cache, so this checks the rename protocol, not power loss."""
    rng = random.Random(20261128)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    mid_write_kills = 0
    for trial in range(4):
        d = tmp_path / f"ck{trial}"
        with subprocess.Popen([sys.executable, str(script), str(d)], stdout=subprocess.PIPE,
                              text=True) as proc:
            _kill_inside_a_write(proc, d, rng)
        mid_write_kills += any(p.name.startswith(".ckpt-") for p in d.iterdir())
        loaded = load_latest(d)
        assert loaded is not None
        i = loaded.meta["i"]
        assert int(loaded.arrays["i"]) == i
        big = loaded.arrays["big"]
        assert big.shape == (4_000_000,) and np.all(big == i)
        assert i == max(s for s, _ in list_checkpoints(d))  # the newest complete one
    assert mid_write_kills >= 1, "no kill landed inside a write: the test proved nothing"


# -- issue 10, defect 8: non-finite state ------------------------------------------------------


def test_manager_skips_a_nan_checkpoint_with_a_valid_checksum(tmp_path: Path) -> None:
    """Defect 8: a checkpoint with NaN weights but a valid checksum loaded without a warning.
    The manager (model state) refuses it, naming the array, and falls back to the previous
    valid checkpoint; the file format itself still round-trips any bit pattern."""
    clock = FakeClock()
    mgr = CheckpointManager(tmp_path, every_s=1.0, keep=5, clock=clock)
    good = {"W1": np.full((3, 2), 0.5, np.float32), "count": np.arange(4)}
    assert mgr.save_now(lambda: (good, {"n": 0})).name == "ckpt-000000000.npz"
    bad = {"W1": good["W1"].copy(), "count": np.arange(4)}
    bad["W1"][1, 1] = np.nan
    path = save_checkpoint(tmp_path, bad, {"n": 1})  # as the old code wrote it: checksum ok
    assert read_checkpoint(path).arrays["W1"][1, 1] != bad["W1"][1, 1]  # NaN != NaN: loads
    with pytest.raises(NonFiniteStateError, match=r"ckpt-000000001\.npz: array 'W1' holds 1 "
                                                  r"non-finite values"):
        read_checkpoint(path, require_finite=True)
    loaded = mgr.load_latest()
    assert loaded is not None and loaded.meta == {"n": 0} and mgr.skipped == 1
    np.testing.assert_array_equal(loaded.arrays["W1"], good["W1"])
    assert mgr.next_seq == 2  # the next save goes after the refused file


def test_manager_never_saves_non_finite_state(tmp_path: Path) -> None:
    """Defect 8: a short run could save NaN state again. Periodic saves (foreground and
    background) are refused and counted, save_now raises naming the array; no file appears."""
    clock = FakeClock()
    state = {"W1": np.array([1.0, np.inf]), "mu": np.zeros(2)}
    for background in (False, True):
        d = tmp_path / f"bg{background}"
        mgr = CheckpointManager(d, every_s=1.0, keep=3, clock=clock, background=background)
        clock.t += 1.0
        mgr.maybe_save(lambda: (state, {}))
        assert mgr.wait(10.0)
        assert mgr.refused == 1 and mgr.saved == 0 and mgr.failed == 0
        with pytest.raises(NonFiniteStateError, match=r"array 'W1' holds 1 non-finite"):
            mgr.save_now(lambda: (state, {}))
        assert mgr.refused == 2 and list_checkpoints(d) == []
    with pytest.raises(NonFiniteStateError):
        save_checkpoint(tmp_path / "direct", state, {}, require_finite=True)
    assert not (tmp_path / "direct").exists()


def test_resume_falls_back_past_a_diverged_model(tmp_path: Path) -> None:
    """Defect 8, end to end: restore_network resumes from the last finite checkpoint when the
    newest one holds a NaN in the learned weights."""
    from model_helpers import bars, windows

    from augury.model.network import Network
    from augury.model.spec import ModelSpec
    from augury.pipeline import restore_network

    spec = ModelSpec(width=32, height=24, pool=4, tick_us=1_000, horizon_us=5_000)
    net = Network(spec)
    for b in windows(bars(32, 24, 20_000, seed=1, noise_rate_hz=5.0), 0, 20_000,
                     spec.horizon_us):
        net.step(b)
    arrays = net.state_dict()
    arrays.pop("__learning__")
    assert non_finite_array(arrays) is None  # a healthy model state is finite
    meta = {"schema": 1, "spec": net.spec_json(), "learning": True}
    mgr = CheckpointManager(tmp_path, 60.0, 3)
    first = mgr.save_now(lambda: (arrays, meta))
    diverged = {k: v.copy() for k, v in arrays.items()}
    diverged["W1"].reshape(-1)[0] = np.nan
    save_checkpoint(tmp_path, diverged, meta)
    back = Network(spec)
    mgr2 = CheckpointManager(tmp_path, 60.0, 3)
    assert restore_network(back, mgr2) == first and mgr2.skipped == 1
    assert np.all(np.isfinite(back.state.W1))
    np.testing.assert_array_equal(back.state.W1, net.state.W1)


def test_final_checkpoint_of_a_diverged_model_is_refused_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pipeline that stops with NaN in its state logs the refused final checkpoint and keeps
    the previous one, instead of ending ``run`` with a traceback."""
    from augury.model.network import Network
    from augury.model.spec import ModelSpec
    from augury.pipeline import Pipeline, PipelineOptions

    net = Network(ModelSpec(width=32, height=24, pool=4))
    mgr = CheckpointManager(tmp_path, 60.0, 3)
    pipe = Pipeline(None, net, None, PipelineOptions(), checkpoints=mgr)  # type: ignore[arg-type]
    first = mgr.save_now(pipe.state_snapshot)
    net.state.W1.reshape(-1)[0] = np.nan
    with caplog.at_level(logging.ERROR):
        pipe._finish_checkpoints()
    assert "final checkpoint refused" in caplog.text and "W1" in caplog.text
    assert [p for _, p in list_checkpoints(tmp_path)] == [first]
