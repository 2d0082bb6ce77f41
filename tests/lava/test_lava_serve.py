"""``augury run --backend lava`` end to end: a daemon (this 3.10 interpreter) starts the Lava
sidecar, serves a numba-trained checkpoint on a crop of a real recording, and publishes the
four topics; its forecast scores like the numba engine's. A dying sidecar ends the run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lava.magma", reason="lava-nc is not installed (Python 3.10 venv only: "
                    "make lava-test)")

from daemon_helpers import read_log_until  # noqa: E402

from augury.checkpoint import save_checkpoint  # noqa: E402
from augury.client import Subscriber  # noqa: E402
from augury.events import EventBatch  # noqa: E402
from augury.model.network import Network  # noqa: E402
from augury.model.scoring import poisson_loglik, window_counts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T_SERVE_US = 1_500_000  # the checkpoint ends here (trained on the crop's first 1.5 s)
SERVE_MS = 600  # stream time served by the daemon (ms)
TOPICS = ("beliefs", "prediction", "surprise", "stats")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _setup(tmp_path: Path, trained: Network, crop: np.ndarray, serve_ms: int,
           learning: bool = False) -> tuple[Path, Path, np.ndarray]:
    """The served piece as an .npz in tmp_path (never in the repo) and a state directory
    holding the trained network as its checkpoint (learning off unless ``learning``)."""
    t1 = T_SERVE_US + serve_ms * 1000
    ev = crop[(crop["t"] >= T_SERVE_US) & (crop["t"] < t1)]
    npz = tmp_path / "crop.npz"
    np.savez(npz, events=ev, width=trained.spec.width, height=trained.spec.height)
    state = tmp_path / "state"
    arrays = trained.state_dict()
    arrays.pop("__learning__")
    save_checkpoint(state, arrays, {"schema": 1, "spec": trained.spec_json(),
                                    "t_us": trained.t_us, "learning": learning})
    return npz, state, ev


def _daemon(npz: Path, state: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "augury.cli", "run", str(npz), "--backend", "lava",
           "--state-dir", str(state), "--publish", "tcp://127.0.0.1:0", "--control", "none",
           "--batch-us", "10000", "--rate-ms", "10", "--wait-subscriber-s", "60",
           "--set", "publish.dictionary_s=0.5", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _shm_of(pid: int) -> set[str]:
    """Names of the /dev/shm segments that process ``pid`` maps."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return set(re.findall(r"/dev/shm/(\S+)", maps))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def numba_forecasts(trained: Network, ev: np.ndarray, t1_us: int,
                    learning: bool = False) -> dict[int, np.ndarray]:
    """count_mean after each 10 ms batch of the numba engine, by t_us."""
    net = Network(trained.spec)
    net.load_state_dict(trained.state_dict())
    (net.resume_learning if learning else net.freeze_learning)()
    out = {}
    for a in range(T_SERVE_US, t1_us, 10_000):
        b = EventBatch(ev[(ev["t"] >= a) & (ev["t"] < a + 10_000)], a, a + 10_000, 0)
        out[a + 10_000] = net.step(b).count_mean.astype(np.float64)
    return out


def score(spec: object, forecasts: dict[int, np.ndarray], ev: np.ndarray,
          times: list[int]) -> tuple[float, int]:
    """Σ Poisson log-likelihood (nats) of the forecast made at each t in ``times`` against the
    events of (t, t + Δ] from the recording (``scoring``), and the events scored."""
    d = spec.horizon_us
    ll, n_ev = 0.0, 0
    for t in times:
        n = window_counts(spec, ev[(ev["t"] >= t) & (ev["t"] < t + d)])
        ll += poisson_loglik(forecasts[t], n)
        n_ev += int(n.sum())
    return ll, n_ev


@pytest.mark.parametrize(("learning", "serve_ms"), [(False, SERVE_MS), (True, 200)],
                         ids=["frozen", "learning"])
def test_run_backend_lava_publishes_and_forecasts_like_numba(
        tmp_path: Path, trained: Network, rotdisk_crop: np.ndarray, learning: bool,
        serve_ms: int) -> None:
    """All four topics arrive; the forecast log-likelihood per event over the served piece
    is within 0.02 nats/event of the numba engine's on the same spec, checkpoint and input,
    with learning off and (a shorter piece: it writes Lava's parameters every 5 ms) on."""
    npz, state, ev = _setup(tmp_path, trained, rotdisk_crop, serve_ms, learning)
    t1 = T_SERVE_US + serve_ms * 1000
    proc = _daemon(npz, state)
    got: dict[str, list] = {t: [] for t in (*TOPICS, "dictionary")}
    try:
        read_log_until(proc, re.compile(r"Lava sidecar pid \d+"), timeout_s=120)
        endpoint = read_log_until(proc, re.compile(r"publishing on (tcp://[\d.:]+)"),
                                  timeout_s=120).group(1)
        with Subscriber(endpoint, topics=None, timeout_ms=60_000, hwm=100_000) as sub:
            while True:
                msg = sub.recv()
                assert msg is not None, "no message for 60 s"
                got[msg.topic].append(msg)
                if msg.topic == "stats" and msg.stream_time_us >= t1:
                    break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    for topic in TOPICS:
        assert got[topic], f"no {topic} message"
    assert got["dictionary"], "no dictionary message"
    assert {m.meta["engine"] for m in got["stats"]} == {"lava"}
    lava = {m.stream_time_us: m.arrays["count_mean"].astype(np.float64)
            for m in got["prediction"]}
    ref = numba_forecasts(trained, ev, t1, learning)
    times = sorted(t for t in lava if t + trained.spec.horizon_us <= t1)
    assert len(times) >= serve_ms // 10 - 2  # a forecast every 10 ms, none lost
    ll_lava, n_ev = score(trained.spec, lava, ev, times)
    ll_numba, n_ev2 = score(trained.spec, ref, ev, times)
    assert n_ev == n_ev2 and n_ev > 500
    assert {m.meta["learning"] for m in got["stats"]} == {learning}
    diff = abs(ll_lava - ll_numba) / n_ev
    print(f"learning={learning}: forecast log-likelihood: lava {ll_lava / n_ev:.6f}, "
          f"numba {ll_numba / n_ev:.6f} "
          f"nats/event over {n_ev} events in {len(times)} windows; |diff| {diff:.2e}")
    assert diff <= 0.02
    mu = got["beliefs"][-1].arrays["mu_l1"]
    assert mu.shape == (*trained.spec.grid1, trained.spec.k1) and np.isfinite(mu).all()
    assert f'"events_processed": {ev.size}' in out


def test_dead_sidecar_ends_the_run_with_a_clear_error(
        tmp_path: Path, trained: Network, rotdisk_crop: np.ndarray) -> None:
    """The sidecar killed mid-run: the daemon exits 1 within 5 s naming it, no process of the
    sidecar's (its Lava children) is left, and its shared-memory segments are removed."""
    npz, state, _ = _setup(tmp_path, trained, rotdisk_crop, 1_500)
    proc = _daemon(npz, state)
    try:
        pid = int(read_log_until(proc, re.compile(r"Lava sidecar pid (\d+)"),
                                 timeout_s=120).group(1))
        endpoint = read_log_until(proc, re.compile(r"publishing on (tcp://[\d.:]+)"),
                                  timeout_s=120).group(1)
        with Subscriber(endpoint, topics=("prediction",), timeout_ms=60_000) as sub:
            assert sub.recv() is not None  # the engine is serving through the sidecar
            kids = _children(pid)
            assert kids, "the sidecar has no Lava children yet"
            shm = _shm_of(pid)
            assert shm, "the sidecar maps no shared memory"
            os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            _, err = proc.communicate(timeout=30)
            took = time.monotonic() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert took < 5.0, took
    assert f"the Lava sidecar (pid {pid}) died with exit code -9" in err
    deadline = time.monotonic() + 5
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "orphaned Lava processes"
    assert not _alive(pid)
    # removed by the client (SidecarClient._remove_shm) or by the sidecar's multiprocessing
    # resource tracker, whichever comes first
    assert not [n for n in shm if (Path("/dev/shm") / n).exists()], "shared memory left"
