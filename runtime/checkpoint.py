"""Atomic, checksummed checkpoints of plain NumPy state, and resume from the newest valid one.

File: ``<dir>/ckpt-<seq:09d>.npz``, an uncompressed NumPy ``.npz`` (zip of ``.npy``
members, readable with ``np.load(path, allow_pickle=False)``) holding one member per array
plus ``__meta__``: a uint8 array of UTF-8 JSON::

    {"schema": 1, "seq": int, "created_unix_s": float, "arrays": [names...],
     "sha256": hex, "meta": {...user meta...}}

``sha256`` covers, for each array in name order, ``name NUL dtype-descr NUL shape NUL`` and
the raw C-order bytes, then ``meta NUL`` and the user meta as sorted-key JSON, so a torn,
truncated or bit-flipped file is detected and skipped, never loaded.

Atomicity: the file is written under a hidden temporary name in the same directory, flushed,
fsync'ed, renamed over the final name (``os.replace``) and the directory is fsync'ed, so a
crash at any moment leaves either the previous set of checkpoints or the new complete one;
a leftover temporary file is never mistaken for a checkpoint. One writer per directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

CHECKPOINT_SCHEMA = 1
_META_KEY = "__meta__"
_NAME_RE = re.compile(r"^ckpt-(\d{9,})\.npz$")
_TMP_RE = re.compile(r"^\.ckpt-\d{9,}\.npz\.tmp-(\d+)-[0-9a-f]+$")
_ARRAY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

StateGetter = Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]]


class Checkpoint(NamedTuple):
    """A loaded checkpoint: arrays by name, the user meta, and the file it came from."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path


class CheckpointError(ValueError):
    """A checkpoint file is torn, corrupt or fails its checksum; the text names the file."""


class NonFiniteStateError(CheckpointError):
    """State holding NaN or ±inf: refused on load and never saved; the text names the array.

    A diverged model can still produce a file with a valid checksum; loading it would carry
    the divergence across restarts, so such a checkpoint is skipped like a corrupt one.
    """


def non_finite_array(arrays: Mapping[str, np.ndarray]) -> tuple[str, int] | None:
    """(name, count) of the first array (name order) holding NaN or ±inf, else None.

    Only float and complex arrays are checked (integer arrays are always finite).
    """
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if a.dtype.kind in "fc":
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                return name, bad
    return None


def checkpoint_name(seq: int) -> str:
    """File name of checkpoint number ``seq``: ``ckpt-000000012.npz`` (sorts by seq)."""
    if seq < 0:
        raise ValueError(f"checkpoint seq must be >= 0, got {seq}")
    return f"ckpt-{seq:09d}.npz"


def list_checkpoints(dirpath: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(seq, path) of every checkpoint-named file in ``dirpath``, oldest first."""
    d = Path(dirpath)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME_RE.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _meta_json(meta: Mapping[str, Any]) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"checkpoint meta: cannot store a {type(obj).__name__} as JSON")

    # dump, parse, dump again: the canonical text the loader will recompute (string keys)
    try:
        text = json.dumps(dict(meta), sort_keys=True, default=default)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc
    return json.dumps(json.loads(text), sort_keys=True)


def payload_sha256(arrays: Mapping[str, np.ndarray], meta_json: str) -> str:
    """SHA-256 (hex) over the arrays (name order, descr, shape, raw bytes) and the meta JSON."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        h.update(f"{name}\0{a.dtype.descr}\0{a.shape}\0".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))  # reshape copies if strided
    h.update(b"meta\0" + meta_json.encode())
    return h.hexdigest()


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not _ARRAY_NAME_RE.fullmatch(name):
            raise ValueError(f"checkpoint array name {name!r} must match {_ARRAY_NAME_RE.pattern}")
        a = np.asarray(a)
        if a.dtype.hasobject:
            raise ValueError(f"checkpoint array {name!r} has object dtype {a.dtype} "
                             "(pickle is not allowed)")
        out[name] = a
    return out


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)


def save_checkpoint(
    dirpath: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    seq: int | None = None,
    created_unix_s: float | None = None,
    require_finite: bool = False,
) -> Path:
    """Write ``arrays`` + ``meta`` atomically as the next checkpoint; return its path.

    ``seq``: checkpoint number (default: one more than the newest in ``dirpath``);
    ``created_unix_s``: wall-clock creation time in s (default ``time.time()``).
    Array names: ``[A-Za-z0-9][A-Za-z0-9_.-]*``; dtypes without Python objects; meta must be
    JSON-serialisable. With ``require_finite`` (as CheckpointManager saves model state), a
    float array holding NaN or ±inf raises NonFiniteStateError naming it and nothing is
    written; without it, any bit pattern round-trips exactly. Raises ValueError for other
    bad input and OSError for I/O failures (the temporary file is removed).
    """
    d = Path(dirpath)
    checked = _check_arrays(arrays)
    meta_json = _meta_json(meta)
    bad = non_finite_array(checked) if require_finite else None
    if bad is not None:
        raise NonFiniteStateError(f"{d}: not saving a checkpoint: array {bad[0]!r} holds "
                                  f"{bad[1]} non-finite values (NaN or inf)")
    d.mkdir(parents=True, exist_ok=True)
    if seq is None:
        existing = list_checkpoints(d)
        seq = existing[-1][0] + 1 if existing else 0
    final = d / checkpoint_name(seq)
    record = {
        "schema": CHECKPOINT_SCHEMA,
        "seq": seq,
        "created_unix_s": time.time() if created_unix_s is None else created_unix_s,
        "arrays": sorted(checked),
        "sha256": payload_sha256(checked, meta_json),
        "meta": json.loads(meta_json),
    }
    head = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    tmp = d / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            _write_npz(f, {_META_KEY: head, **checked})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(d)
    return final


def read_checkpoint(path: str | os.PathLike[str], *, require_finite: bool = False) -> Checkpoint:
    """Load and verify one checkpoint file; CheckpointError (naming the file) if it is bad.

    Bad: unreadable, another schema, members that differ from the record, a checksum that
    fails, or, with ``require_finite``, a float array holding NaN or ±inf
    (NonFiniteStateError, naming the array: a diverged model saved with a valid checksum).
    """
    p = Path(path)
    try:
        # open the file here: np.load(path) leaks its handle when the zip is unreadable
        with open(p, "rb") as f, np.load(f, allow_pickle=False) as z:
            record = json.loads(bytes(z[_META_KEY]).decode())
            if not isinstance(record, dict) or record.get("schema") != CHECKPOINT_SCHEMA:
                raise CheckpointError(f"{p}: unknown checkpoint schema")
            names = record["arrays"]
            stored = set(z.files) - {_META_KEY}
            if set(names) != stored:
                raise CheckpointError(f"{p}: members {sorted(stored)} differ from the "
                                      f"recorded arrays {sorted(names)}")
            arrays = {n: z[n] for n in names}
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip/npy/JSON damage shows as many types
        raise CheckpointError(f"{p}: unreadable ({type(exc).__name__}: {exc})") from exc
    meta = record.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p}: meta is not an object")
    digest = payload_sha256(arrays, json.dumps(meta, sort_keys=True))
    if digest != record.get("sha256"):
        raise CheckpointError(f"{p}: SHA-256 mismatch (stored {record.get('sha256')!r}, "
                              f"computed {digest})")
    bad = non_finite_array(arrays) if require_finite else None
    if bad is not None:
        raise NonFiniteStateError(f"{p}: array {bad[0]!r} holds {bad[1]} non-finite values "
                                  "(NaN or inf): the model had diverged when it was saved")
    return Checkpoint(arrays=arrays, meta=meta, path=p)


def load_latest(
    dirpath: str | os.PathLike[str],
    *,
    on_skip: Callable[[Path, str], None] | None = None,
    require_finite: bool = False,
) -> Checkpoint | None:
    """The newest checkpoint of ``dirpath`` that verifies, or None if there is none.

    Tries newest to oldest; each torn, corrupt or checksum-failing file (and, with
    ``require_finite``, each holding NaN or ±inf) is skipped with a logged warning and
    reported to ``on_skip(path, reason)``, so the previous valid checkpoint is used.
    Temporary files are ignored.
    """
    for _, path in reversed(list_checkpoints(dirpath)):
        try:
            return read_checkpoint(path, require_finite=require_finite)
        except CheckpointError as exc:
            log.warning("skipping checkpoint (falling back to an older one): %s", exc)
            if on_skip is not None:
                on_skip(path, str(exc))
    return None


def prune(dirpath: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints, and temporary files of other processes.

    Returns the removed paths. Validity is not checked: call it after a successful save.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    removed = [p for _, p in list_checkpoints(dirpath)[:-keep]]
    d = Path(dirpath)
    if d.is_dir():
        for p in d.iterdir():
            m = _TMP_RE.fullmatch(p.name)
            if m and int(m.group(1)) != os.getpid():
                removed.append(p)
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


class CheckpointManager:
    """Periodic checkpoints every ``every_s`` seconds of ``clock`` time, keeping ``keep``.

    ``get_state()`` returns ``(arrays, meta)``; it is called only when a save is due, in the
    caller's thread. With ``background=True`` the file is written by a worker thread so the
    caller (the engine) never waits for the disk; ``get_state`` must then return arrays the
    caller will not modify afterwards (copies of live state), and a save that falls due while
    the previous one is still being written is skipped (``busy``) until the next period.
    Counters: ``saved``, ``failed`` (I/O errors during periodic saves, logged, retried after
    ``every_s``), ``refused`` (periodic saves of state holding NaN/inf, logged, never
    written), ``busy``, ``skipped`` (bad files passed over by ``load_latest``).
    The manager holds model state, which must be finite: it never writes arrays holding NaN
    or ±inf (``refused``) and ``load_latest`` skips such checkpoints for the previous valid
    one.
    Use from one thread (plus the worker it owns).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        every_s: float,
        keep: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        background: bool = False,
        writer: Callable[..., Path] = save_checkpoint,
    ) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0 s, got {every_s}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dirpath = Path(dirpath)
        self.every_s = every_s
        self.keep = keep
        self.background = background
        self._clock = clock
        self._wall_clock = wall_clock
        self._writer = writer
        self._worker: threading.Thread | None = None
        self._last_s = clock()
        existing = list_checkpoints(self.dirpath)
        self.next_seq = existing[-1][0] + 1 if existing else 0
        self.saved = 0
        self.failed = 0
        self.refused = 0
        self.busy = 0
        self.skipped = 0

    def due(self) -> bool:
        """True when ``every_s`` has passed since the last save (or construction)."""
        return self._clock() - self._last_s >= self.every_s

    def _write(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], seq: int,
               created_unix_s: float) -> Path:
        bad = non_finite_array(arrays)  # whatever the writer, non-finite state is never saved
        if bad is not None:
            raise NonFiniteStateError(f"{self.dirpath}: not saving checkpoint {seq}: array "
                                      f"{bad[0]!r} holds {bad[1]} non-finite values "
                                      "(NaN or inf)")
        path = self._writer(self.dirpath, arrays, meta, seq=seq, created_unix_s=created_unix_s)
        self.saved += 1
        prune(self.dirpath, self.keep)
        return path

    def _refused(self, exc: NonFiniteStateError) -> None:
        self.refused += 1
        log.error("checkpoint refused, the previous one is kept: %s", exc)

    def _write_logged(self, *args: Any) -> None:
        try:
            self._write(*args)
        except NonFiniteStateError as exc:
            self._refused(exc)
        except OSError as exc:
            self.failed += 1
            log.error("periodic checkpoint in %s failed: %s", self.dirpath, exc)

    def save_now(self, get_state: StateGetter) -> Path:
        """Save immediately in this thread (e.g. on SIGTERM), after any background write
        finishes, then prune; raises on failure (NonFiniteStateError, counted in
        ``refused``, if the state holds NaN or inf: nothing is written)."""
        self.wait()
        arrays, meta = get_state()
        seq = self.next_seq
        self.next_seq += 1
        self._last_s = self._clock()
        try:
            return self._write(arrays, meta, seq, self._wall_clock())
        except NonFiniteStateError as exc:
            self._refused(exc)
            raise

    def maybe_save(self, get_state: StateGetter) -> Path | None:
        """Save if due: the checkpoint's path (being written, in background mode), or None
        if not due, busy, refused (non-finite state) or the write failed (counted and
        logged)."""
        if not self.due():
            return None
        if not self.background:
            try:
                return self.save_now(get_state)
            except NonFiniteStateError:  # counted and logged by save_now
                self._last_s = self._clock()
                return None
            except OSError as exc:
                self.failed += 1
                self._last_s = self._clock()
                log.error("periodic checkpoint in %s failed: %s", self.dirpath, exc)
                return None
        self._last_s = self._clock()
        if self._worker is not None and self._worker.is_alive():
            self.busy += 1
            return None
        arrays, meta = get_state()
        seq = self.next_seq
        self.next_seq += 1
        self._worker = threading.Thread(
            target=self._write_logged, args=(arrays, meta, seq, self._wall_clock()),
            name="augury-checkpoint", daemon=True)
        self._worker.start()
        return self.dirpath / checkpoint_name(seq)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a background write to finish; False if it is still running."""
        if self._worker is not None:
            self._worker.join(timeout_s)
            if self._worker.is_alive():
                return False
            self._worker = None
        return True

    def load_latest(self) -> Checkpoint | None:
        """The newest valid checkpoint with finite state (counting skipped bad ones, NaN/inf
        included); later saves go after it."""

        def count(path: Path, reason: str) -> None:
            self.skipped += 1

        self.wait()
        found = load_latest(self.dirpath, on_skip=count, require_finite=True)
        existing = list_checkpoints(self.dirpath)
        if existing:
            self.next_seq = max(self.next_seq, existing[-1][0] + 1)
        return found
