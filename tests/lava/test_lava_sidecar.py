"""The Lava sidecar: a 3.10 process serving layer 1 over ZeroMQ on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lava.magma", reason="lava-nc is not installed (Python 3.10 venv only: "
                    "make lava-test)")

from lava_helpers import run_numba  # noqa: E402

from augury.lava.sidecar_client import SidecarClient, SidecarError, start_sidecar  # noqa: E402
from augury.model.network import Network  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_sidecar_serves_layer1_like_numba(trained: Network, rotdisk_crop: np.ndarray) -> None:
    """load → feed 5 ms batches → μ agrees with numba within 1e-9 after each; state comes
    back as a checkpoint; bad requests are answered, not fatal; close ends the process."""
    net = Network(trained.spec)
    net.load_state_dict(trained.state_dict())
    proc, endpoint = start_sidecar(sys.executable, env=_env())
    client = SidecarClient(endpoint, timeout_s=60)
    try:
        assert endpoint.startswith("tcp://127.0.0.1:")
        with pytest.raises(SidecarError, match="before load"):
            client.feed(rotdisk_crop[:0], 0)
        t0 = net.t_us
        assert client.load(net.spec, net.state, chunk_ticks=10) == t0 + 1_000
        for i in range(8):
            a, b = t0 + i * 5_000, t0 + (i + 1) * 5_000
            run_numba(net, rotdisk_crop, a, b)
            ticks, mu = client.feed(
                rotdisk_crop[(rotdisk_crop["t"] >= a) & (rotdisk_crop["t"] < b)], b, seq=i)
            assert ticks == 5
            assert np.abs(mu - net.state.mu1).max() <= 1e-9
        spec, st = client.state()
        assert spec == net.spec
        assert np.abs(st.z1 - net.state.z1).max() <= 1e-9
        with pytest.raises(SidecarError, match="unknown command"):
            client._call({"cmd": "nonsense"})
    finally:
        client.close()
    assert proc.wait(timeout=20) == 0
    proc.stderr_log.close()


def test_sidecar_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """A sidecar whose parent is killed notices within its idle poll and exits."""
    code = ("import sys, json\n"
            "from augury.lava.sidecar_client import start_sidecar\n"
            "p, ep = start_sidecar(sys.executable)\n"
            "print(p.pid, flush=True)\n"
            "import time; time.sleep(120)\n")
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=_env(), cwd=tmp_path)
    try:
        pid = int(host.stdout.readline())
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.1)
        alive = Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        assert not alive
    finally:
        host.kill()
        host.stdout.close()
