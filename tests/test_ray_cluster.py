"""The local-cluster recipe, tested: a real two-node Ray cluster on this machine (``ray start
--head`` and one worker node, one CPU each), ``exokiratory run flags --engine ray
--ray-address ...`` on a small workspace with near copies, and a sharded IVF build; the flags
table and the index are those of a local run, and the shards ran on both nodes.

The test ends the nodes it started by their process groups (``ray start --block`` keeps each
node's processes in one group); by hand, ``ray stop`` on every machine does it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from exokiratory import Workspace

from .conftest import NATURAL_PHOTOS, skimage_data_dir

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ray = pytest.importorskip("ray", reason="the Ray recipe needs ray: pip install 'exokiratory[ray]'")
RAY_CLI = Path(sys.executable).with_name("ray")
if not RAY_CLI.exists():  # pragma: no cover - a ray package without its script
    pytest.skip("the `ray` command is not installed beside this Python", allow_module_level=True)

# the local recipe runs without Ray's cluster token (every process is on this machine)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
NODE_WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(RAY_CLI), "start", "--block", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,  # its own process group: ended as one below
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the node's process group: SIGTERM (``ray start --block`` stops its node), then
    SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the node's own children


def _started(log: Path) -> bool:
    return log.exists() and "Ray runtime started" in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node and one worker node (one CPU each) on this machine; yields the address."""
    tmp = Path(tempfile.mkdtemp(prefix="exoray", dir="/tmp"))  # short: Ray's socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        procs.append(
            _start(
                [
                    "--head",
                    f"--port={port}",
                    "--num-cpus=1",
                    "--include-dashboard=false",
                    f"--ray-client-server-port={_free_port()}",
                    f"--temp-dir={tmp}",
                ],
                tmp / "head.log",
            )
        )
        procs.append(_start([f"--address={address}", "--num-cpus=1"], tmp / "worker.log"))
        deadline = time.monotonic() + NODE_WAIT_S
        while not (_started(tmp / "head.log") and _started(tmp / "worker.log")):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join((tmp / f).read_text()[-2000:] for f in ("head.log", "worker.log"))
                pytest.fail(f"the local Ray cluster did not start two nodes:\n{logs}")
            time.sleep(1)
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def sensed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scanned and sensed workspace with exact and near copies (flags not derived yet)."""
    root = tmp_path_factory.mktemp("raycluster")
    src = root / "src"
    src.mkdir()
    data = skimage_data_dir()
    for name in NATURAL_PHOTOS[:6]:
        shutil.copy(data / name, src / name)
    astro = Image.open(data / "astronaut.png").convert("RGB")
    astro.resize((256, 256)).save(src / "astronaut_small.jpg", quality=70)
    astro.filter(ImageFilter.GaussianBlur(1)).save(src / "astronaut_soft.jpg", quality=85)
    coffee = Image.open(data / "coffee.png").convert("RGB")
    coffee.resize((300, 200)).save(src / "coffee_small.png")
    shutil.copy(data / "astronaut.png", src / "astronaut_copy.png")
    w = Workspace.init(root / "ws", [str(src)])
    w.scan()
    w.run(["sense"], workers=1)
    return root / "ws"


def _flags(ws: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = (
        Workspace(ws).sql("SELECT * FROM flags ORDER BY image_id").to_pylist()
    )
    return rows


def test_flags_on_a_two_node_cluster_equal_local(
    cluster: str, sensed: Path, tmp_path: Path
) -> None:
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(sensed, local)
    shutil.copytree(sensed, on_ray)
    Workspace(local).run(["flags"])
    cmd = [sys.executable, "-m", "exokiratory", "run", "flags", "-w", str(on_ray)]
    out = subprocess.run(
        [*cmd, "--engine", "ray", "--ray-address", cluster],
        env={**ENV, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    expected = _flags(local)
    assert any(r["is_near_duplicate"] for r in expected)  # the near copies were found
    assert _flags(on_ray) == expected
    # every near-duplicate search ran as Ray tasks on the two-node cluster (tiny shards may
    # all go to one node: Ray reuses a worker for tasks that wait; see the IVF test)
    ran = re.findall(r"hamming search .*?: (\d+) shards as Ray tasks on (\d) of (\d) node", text)
    assert ran and all(int(s) >= 2 and m == "2" for s, _, m in ran), text[-3000:]
    jobs = Workspace(on_ray).sql("SELECT engine FROM jobs WHERE pass_name = 'flags'").to_pylist()
    assert jobs and {j["engine"] for j in jobs} == {"ray"}


#: run in a process of its own: a Ray driver inside the pytest worker can take the worker down
#: with it (a lost connection ends a driver's process)
_IVF_ON_CLUSTER = """
import json, logging, sys, time
import faiss, numpy as np, ray
from exokiratory.engine.shards import imap_shards, map_shards, shard_engine
from exokiratory.search import ivf

rng = np.random.default_rng(3)
centres = rng.standard_normal((10, 24)).astype(np.float32)
x = centres[rng.integers(0, 10, 3000)] + 0.3 * rng.standard_normal((3000, 24))
x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

def chunks():
    for lo in range(0, 3000, 250):
        yield np.arange(lo, lo + 250, dtype=np.int64), x[lo : lo + 250]

def slow_node(item):  # long enough for the tasks to use every node
    time.sleep(0.5)
    return str(ray.get_runtime_context().get_node_id())

local, _, _ = ivf.build_ivf("ivfsq8", np.arange(3000), 24, chunks)
ivf.SHARD_ROWS = 500
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
ray.init(address=sys.argv[1], log_to_driver=False)
with shard_engine("ray"):
    built, _, added = ivf.build_ivf("ivfsq8", np.arange(3000), 24, chunks, imap=imap_shards)
    used = set()
    for _ in range(6):  # a loaded machine may start the worker node's process late
        used |= set(map_shards(slow_node, range(4)))
        if len(used) == 2:
            break
alive = sum(n["Alive"] for n in ray.nodes())
ray.shutdown()
same = bool(np.array_equal(faiss.serialize_index(built), faiss.serialize_index(local)))
hits = bool(np.array_equal(built.search(x[:50], 5)[1], local.search(x[:50], 5)[1]))
print(json.dumps({"added": int(added), "alive": alive, "used": len(used), "same": same,
                  "hits": hits}))
"""


def test_sharded_ivf_on_a_two_node_cluster_equals_local(cluster: str) -> None:
    pytest.importorskip("faiss")
    out = subprocess.run(
        [sys.executable, "-c", _IVF_ON_CLUSTER, cluster],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"added": 3000, "alive": 2, "used": 2, "same": True, "hits": True}
    assert re.search(r"6 shards as Ray tasks on \d of 2 node", out.stderr), out.stderr[-3000:]


def test_index_build_engine_ray_writes_the_local_index(cluster: str, tmp_path: Path) -> None:
    """``Workspace.build_index(engine="ray")`` (``index build --engine ray``): the same bytes."""
    pytest.importorskip("torch")
    pytest.importorskip("faiss")
    from exokiratory.core.config import render_config

    src = tmp_path / "src"
    src.mkdir()
    for name in NATURAL_PHOTOS[:4]:
        shutil.copy(skimage_data_dir() / name, src / name)
    w = Workspace.init(tmp_path / "ws", [str(src)])
    w.config.passes["embed-clip"] = {"model": "tiny", "routed_only": False}
    w.storage.write_bytes_atomic("exokiratory.yaml", render_config(w.config).encode())
    w = Workspace(tmp_path / "ws")
    w.scan()
    w.run(["embed-clip"], workers=1)
    shutil.copytree(tmp_path / "ws", tmp_path / "ws_ray")
    w.build_index("clip", kind="ivfsq8")
    cmd = [sys.executable, "-m", "exokiratory", "index", "build", "clip", "--kind", "ivfsq8"]
    out = subprocess.run(  # the CLI in its own process (see _IVF_ON_CLUSTER)
        [*cmd, "-w", str(tmp_path / "ws_ray"), "--engine", "ray", "--ray-address", cluster],
        env={**ENV, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "index clip: ivfsq8, 4 vectors (4 added)" in out.stdout, out.stdout
    local = (tmp_path / "ws" / "indices" / "clip.faiss").read_bytes()
    assert (tmp_path / "ws_ray" / "indices" / "clip.faiss").read_bytes() == local
