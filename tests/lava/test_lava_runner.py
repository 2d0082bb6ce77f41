"""The guarded runner against every Lava 0.10 hazard listed in ../shared/LAVA.md."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lava.magma", reason="lava-nc is not installed (Python 3.10 venv only: "
                    "make lava-test)")

from crashproc.process import Crash  # noqa: E402
from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: E402
from lava_helpers import crop_spec  # noqa: E402

from augury.lava import LavaError  # noqa: E402
from augury.lava.layer1 import LavaLayer1  # noqa: E402
from augury.lava.runner import GuardedRunner, LavaProcessError  # noqa: E402
from augury.model.network import Network  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CFG = Loihi2SimCfg(select_tag="floating_pt")


def _ring(crash_at: int) -> Crash:
    """Two Crash processes in a ring (each waits for the other every step); the first
    raises at step ``crash_at`` (0: never)."""
    a, b = Crash(at_step=crash_at, name="crasher"), Crash(at_step=0, name="bystander")
    a.s_out.connect(b.s_in)
    b.s_out.connect(a.s_in)
    return a


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _shm_left(names: list[str]) -> list[str]:
    return [n for n in names if (Path("/dev/shm") / n).exists()]


def test_model_raising_is_reported_within_1s_and_cleaned_up() -> None:
    """Lava 0.10 hangs forever, silently, when a model raises; the runner names the model,
    gives its traceback within 1 s, kills the other children and removes the shared memory."""
    runner = GuardedRunner(_ring(crash_at=6), CFG, poll_s=0.05)
    runner.run(3)  # compiled and started: what follows times the failure alone
    pids, shm = runner.child_pids, runner.shm_names
    assert pids and shm and all(_alive(p) for p in pids)
    t = time.monotonic()
    with pytest.raises(LavaProcessError) as info:
        runner.run(1_000)
    took = time.monotonic() - t
    print(f"failure reported after {took:.3f} s")
    msg = str(info.value)
    assert "PyCrashModel" in msg and "CrashError" in msg and "raised at step 6" in msg, msg
    assert "Traceback" in msg
    assert took < 1.0, took
    assert not [p for p in pids if _alive(p)]
    assert not _shm_left(shm)
    with pytest.raises(LavaError, match="closed after a failure"):
        runner.run(1)
    runner.close()  # idempotent


def test_chunks_are_runs_without_pause(trained: Network, rotdisk_crop: np.ndarray) -> None:
    """Many short non-blocking runs + wait (never pause) give the same state bit for bit as
    few long ones (Lava 0.10 hangs on pause() then run())."""
    t0 = trained.t_us
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + 50_000)]
    out = []
    for chunk in (7, 50):
        with LavaLayer1(trained.spec, trained.state, chunk_ticks=chunk) as lav:
            lav.advance(ev, 50)
            out.append(lav.state())
            assert lav.runner.steps_run == 50 * 2 * trained.spec.relax_steps
    for k in ("mu1", "u1", "z1", "xhat1", "eps1"):
        np.testing.assert_array_equal(getattr(out[0], k), getattr(out[1], k), err_msg=k)


def test_vars_only_between_chunks() -> None:
    """Var.get() during a run returns None and Var.set() before the first run raises in Lava
    0.10: the runner reads initial values before the first chunk, refuses an early set with
    a clear error, and reads/writes between chunks."""
    a = _ring(crash_at=0)
    with GuardedRunner(a, CFG) as runner:
        assert int(runner.get(a.n)[0]) == 0
        with pytest.raises(LavaError, match="before the first run"):
            runner.set(a.n, np.array([5]))
        runner.run(4)
        assert int(runner.get(a.n)[0]) == 4
        runner.set(a.n, np.array([100]))
        runner.run(2)
        assert int(runner.get(a.n)[0]) == 102


def _script(body: str) -> str:
    return textwrap.dedent("""
        import json, sys, time
        from lava.magma.core.run_configs import Loihi2SimCfg
        from augury.lava.runner import GuardedRunner
        from crashproc.process import Crash
        a, b = Crash(at_step=0, name="a"), Crash(at_step=0, name="b")
        a.s_out.connect(b.s_in)
        b.s_out.connect(a.s_in)
        CFG = Loihi2SimCfg(select_tag="floating_pt")
    """) + textwrap.dedent(body)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("with_block", [True, False], ids=["with-block", "atexit"])
def test_host_script_raising_exits_cleanly(tmp_path: Path, with_block: bool) -> None:
    """An exception in the host script with a live runtime hangs the interpreter at exit in
    Lava 0.10; with the runner (as a context manager, or by its atexit hook) the script
    exits with the error, and no child process or shared memory is left."""
    body = """
        runner = GuardedRunner(a, CFG)
        runner.run(3)
        print(json.dumps({"pids": runner.child_pids, "shm": runner.shm_names}), flush=True)
        raise RuntimeError("host script failure")
    """
    if with_block:
        body = """
            with GuardedRunner(a, CFG) as runner:
                runner.run(3)
                print(json.dumps({"pids": runner.child_pids, "shm": runner.shm_names}),
                      flush=True)
                raise RuntimeError("host script failure")
        """
    path = tmp_path / "host.py"
    path.write_text(_script(body))
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                       timeout=60, env=_env(), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "host script failure" in r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["pids"] and info["shm"]
    assert not [p for p in info["pids"] if _alive(p)]
    assert not _shm_left(info["shm"])


def test_killed_host_takes_its_children_along(tmp_path: Path) -> None:
    """If the host dies (SIGKILL), Lava's children were orphaned and kept its stdout pipes
    open; the runner's PR_SET_PDEATHSIG hook ends them. The shared memory of such a run
    stays in /dev/shm (nothing can run in a SIGKILLed process): removed by the test."""
    path = tmp_path / "host.py"
    path.write_text(_script("""
        runner = GuardedRunner(a, CFG)
        runner.run(3)
        print(json.dumps({"pids": runner.child_pids, "shm": runner.shm_names}), flush=True)
        time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=_env(), cwd=tmp_path)
    info: dict = {}
    try:
        info = json.loads(proc.stdout.readline())
        assert info["pids"] and all(_alive(p) for p in info["pids"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5.0
        while [p for p in info["pids"] if _alive(p)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in info["pids"] if _alive(p)]
    finally:
        proc.kill()
        proc.stdout.close()
        for name in _shm_left(info.get("shm", [])):
            (Path("/dev/shm") / name).unlink(missing_ok=True)


def test_start_method_set_before_lava_is_a_clear_error(tmp_path: Path) -> None:
    """Lava 0.10 forces 'fork' at import and fails with 'context has already been set' if a
    start method was chosen first: require_lava() says so in plain words."""
    code = ("import multiprocessing as mp\nmp.set_start_method('spawn')\n"
            "from augury.lava import LavaError, require_lava\n"
            "try:\n    require_lava()\nexcept LavaError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "start method is already set ('spawn')" in r.stdout


def test_process_package_holds_only_lava_classes() -> None:
    """Lava's compiler executes every sibling .py file of a Process's module: the package
    ``augury.lava.procs`` holds its Processes and ProcessModels and nothing else."""
    import inspect

    from lava.magma.core.model.py.model import PyLoihiProcessModel
    from lava.magma.core.process.process import AbstractProcess

    import augury.lava.procs as procs

    pkg = Path(procs.__file__).parent
    assert sorted(p.name for p in pkg.glob("*.py")) == ["__init__.py", "fixed.py", "models.py",
                                                          "process.py"]
    from augury.lava.procs import fixed, models, process

    for mod in (models, process, fixed):
        own = [c for _, c in inspect.getmembers(mod, inspect.isclass)
               if c.__module__ == mod.__name__]
        assert own and all(issubclass(c, (AbstractProcess, PyLoihiProcessModel)) for c in own)


def test_numba_spec_mismatch_is_refused() -> None:
    """A spec outside what the Lava backend implements fails before Lava starts."""
    from augury.lava.convert import LavaSpecError

    net = Network(crop_spec(settle=0.1))
    with pytest.raises(LavaSpecError, match="settle=0.1"):
        LavaLayer1(net.spec, net.state)
