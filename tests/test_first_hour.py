"""What a new user meets in the first hour: hostile file names and special files, a read-only
``sql``, workers that die with their parent, clear errors for commands run too early."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exokiratory import Workspace
from exokiratory.core.paths import PREFIX, from_stored, to_stored

from .conftest import skimage_data_dir


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b))
def test_stored_paths_are_utf8_and_lossless(name: bytes) -> None:
    path = os.fsdecode(b"/photos/" + name)
    stored = to_stored(path)
    stored.encode("utf-8")  # valid UTF-8, so Parquet / DuckDB / JSON can hold it
    assert from_stored(stored) == path
    valid = True
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    assert stored.startswith(PREFIX) != valid  # a valid name is stored exactly as given


def test_a_non_utf8_name_and_a_fifo_get_rows_and_the_scan_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(skimage_data_dir() / "coffee.png", src / "ok.png")
    bad = os.fsencode(src) + b"/\xff\xfe.png"
    shutil.copy(skimage_data_dir() / "chelsea.png", bad)
    os.mkfifo(src / "pipe.png")
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    rep = ws.scan(progress=False)
    assert rep.new_images == 2
    paths = {r["path"]: r for r in ws.paths().to_pylist()}
    stored = to_stored(os.fsdecode(bad))
    assert stored in paths and paths[stored]["status"] == "image"
    fifo = paths[str(src / "pipe.png")]
    assert fifo["status"] == "error" and "FIFO" in fifo["error"]
    (probe,) = ws.run(["probe"], workers=1, progress=False)
    assert probe.processed == 2 and probe.unit_errors == 0  # the escaped path is readable


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_rescan_after_non_utf8_is_a_no_op(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(skimage_data_dir() / "chelsea.png", os.fsencode(src) + b"/caf\xe9.png")
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    ws.scan(progress=False)
    again = ws.scan(progress=False)
    assert again.new_images == 0 and again.inspected == 0


def _scanned(tmp_path: Path) -> Workspace:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("coffee.png", "chelsea.png"):
        shutil.copy(skimage_data_dir() / name, src / name)
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    ws.scan(progress=False)
    return ws


def test_sql_is_read_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    import duckdb

    ws = _scanned(tmp_path)
    root = Path(ws.storage.root)
    config = (root / "exokiratory.yaml").read_bytes()
    part = sorted((root / "manifests" / "images").glob("*.parquet"))[0]
    attacks = [
        f"COPY (SELECT 1 AS a) TO '{root / 'exokiratory.yaml'}' (FORMAT csv)",
        f"COPY (SELECT * FROM images WHERE false) TO '{part}' (FORMAT parquet)",
        f"ATTACH '{root / 'evil.duckdb'}' AS evil",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "SELECT 1; DROP VIEW images",
    ]
    for q in attacks:
        with pytest.raises((ValueError, duckdb.Error)):
            ws.sql(q)
    cli = [sys.executable, "-m", "exokiratory", "sql", "-w", str(root), attacks[0]]
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: read-only") and r.stderr.count("\n") <= 2
    assert (root / "exokiratory.yaml").read_bytes() == config
    assert not (root / "evil.duckdb").exists()
    assert ws.sql("SELECT count(*) AS n FROM images").to_pylist() == [{"n": 2}]
    assert ws.sql("DESCRIBE images").num_rows > 5 and ws.sql("SHOW TABLES").num_rows > 3
    with pytest.raises(ValueError, match="read-only"):
        ws.sql(f"COPY images TO '{tmp_path / 'x.csv'}'")


def test_workers_die_with_the_runner(tmp_path: Path) -> None:
    """SIGKILL only the main ``run`` process: its worker processes end too (no part written
    after the kill), and a rerun completes the pass."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from exokiratory.core.config import RunConfig

    from .corpus import make_synthetic_collection

    src = tmp_path / "src"
    make_synthetic_collection(src, 800, seed=5)
    ws = Workspace.init(tmp_path / "ws", [str(src)], run=RunConfig(batch_size=20))
    ws.scan(progress=False)
    parts = Path(ws.storage.root) / "features" / "global" / "v1"
    cmd = [sys.executable, "-m", "exokiratory", "-q", "run", "sense", "--workers", "2"]
    proc = subprocess.Popen(
        [*cmd, "-w", str(ws.storage.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not list(parts.glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    group = [p for p in psutil.process_iter() if _pgid(p) == proc.pid and p.pid != proc.pid]
    assert group, "the runner started no worker process"
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its group
    proc.wait()
    _gone, alive = psutil.wait_procs(group, timeout=10)
    assert not alive, f"workers still alive after the runner died: {alive}"
    written = {p.name for p in parts.glob("*.parquet")}
    time.sleep(1.0)
    assert {p.name for p in parts.glob("*.parquet")} == written  # nothing written after
    (rest,) = ws.run(["sense"], progress=False)
    assert rest.already_done + rest.processed == rest.wanted == 800


def _pgid(p: object) -> int | None:
    try:
        return os.getpgid(p.pid)  # type: ignore[attr-defined]
    except (ProcessLookupError, PermissionError):
        return None


def test_killed_runs_keep_their_batch_records(tmp_path: Path) -> None:
    """The jobs log is buffered; a killed run's records come back from the parts' footers, so
    the batch and seconds figures (report, status) count every part."""
    import signal
    import subprocess
    import sys
    import time

    from exokiratory.core.config import RunConfig

    from .corpus import make_synthetic_collection

    src = tmp_path / "src"
    make_synthetic_collection(src, 400, seed=6)
    # compact_min_parts=0: the parts stay as written, so they can be compared with the log
    run = RunConfig(batch_size=10, compact_min_parts=0)
    ws = Workspace.init(tmp_path / "ws", [str(src)], run=run)
    ws.scan(progress=False)
    parts = Path(ws.storage.root) / "features" / "global" / "v1"
    cmd = [sys.executable, "-m", "exokiratory", "-q", "run", "sense", "--workers", "1"]
    proc = subprocess.Popen(
        [*cmd, "-w", str(ws.storage.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_parts = {p.name for p in parts.glob("part-*.parquet")}
    logged = ws.sql("SELECT count(*) AS n FROM jobs WHERE pass_name = 'sense'").to_pylist()
    assert logged[0]["n"] < len(killed_parts)  # the log had not been flushed yet...
    ws.run(["sense"], workers=1, progress=False)
    rows = ws.sql(
        "SELECT batch, count(*) AS n, any_value(run_id) AS run, min(seconds) AS s FROM jobs "
        "WHERE pass_name = 'sense' AND status = 'ok' GROUP BY batch"
    ).to_pylist()
    by_batch = {r["batch"]: r for r in rows}
    assert killed_parts <= set(by_batch)  # ...and the rerun recovered every one
    assert {p.name for p in parts.glob("part-*.parquet")} == set(by_batch)
    assert all(r["n"] == 1 for r in rows)  # one record per batch, none twice
    # a recovered record says what the part says, and that its seconds are unknown
    assert all((r["s"] is None) == (r["run"] == "recovered") for r in rows)


def test_probe_reports_corrupt_jpeg_data(tmp_path: Path) -> None:
    """Bytes damaged in the middle of the entropy-coded data: Pillow decodes the file without
    complaint; the probe records libjpeg's warning (the image stays readable)."""
    import io

    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    buf = io.BytesIO()
    Image.open(skimage_data_dir() / "astronaut.png").convert("RGB").save(buf, "JPEG", quality=90)
    good = buf.getvalue()
    bad = bytearray(good)
    mid = len(bad) // 2 + 5 * 997  # a place where this damage makes libjpeg warn
    bad[mid : mid + 4] = bytes([0x12, 0xFF, 0x00, 0x9A])
    (src / "good.jpg").write_bytes(good)
    (src / "bad.jpg").write_bytes(bytes(bad))
    with Image.open(src / "bad.jpg") as im:
        im.load()  # Pillow alone sees nothing wrong
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    ws.scan(progress=False)
    ws.run(["probe"], workers=1, progress=False)
    rows = {
        Path(r["first_path"]).name: r
        for r in ws.sql(
            "SELECT i.first_path, p.error, p.decode_warning FROM probe p JOIN images i USING (image_id)"
        ).to_pylist()
    }
    assert rows["good.jpg"]["decode_warning"] is None and rows["good.jpg"]["error"] is None
    assert rows["bad.jpg"]["error"] is None
    assert "Corrupt JPEG data" in (rows["bad.jpg"]["decode_warning"] or "")


def test_global_options_anywhere_and_workspace_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from exokiratory.api.cli import app
    from exokiratory.api.cli_base import find_workspace, hoist_global_options

    assert hoist_global_options(["scan", "-w", "W", "-q"]) == ["-w", "W", "-q", "scan"]
    assert hoist_global_options(["-w", "W", "scan"]) == ["-w", "W", "scan"]
    assert hoist_global_options(["sql", "-v", "SELECT 1", "--", "-q"]) == [
        "-v",
        "sql",
        "SELECT 1",
        "--",
        "-q",
    ]
    ws = _scanned(tmp_path)
    root = Path(ws.storage.root)
    runner = CliRunner()
    monkeypatch.delenv("EXOKIRATORY_WORKSPACE", raising=False)
    for argv in (
        ["-w", str(root), "status", "--json"],
        hoist_global_options(["status", "--json", "-w", str(root), "-q"]),
    ):
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, r.output
        assert '"ok": 2' in r.output.replace(" ", "") or '"ok":2' in r.output.replace(" ", "")
    (root / "sub" / "deeper").mkdir(parents=True)
    assert find_workspace(root / "sub" / "deeper") == root
    monkeypatch.chdir(root / "sub" / "deeper")
    r = runner.invoke(app, ["sql", "-f", "csv", "SELECT count(*) AS n FROM images"])
    assert r.exit_code == 0 and r.output.split() == ['"n"', "2"]


def test_piped_tables_keep_whole_values(tmp_path: Path) -> None:
    import subprocess
    import sys

    ws = _scanned(tmp_path)
    cmd = [sys.executable, "-m", "exokiratory", "sql", "SELECT image_id, first_path FROM images"]
    r = subprocess.run([*cmd, "-w", str(ws.storage.root)], capture_output=True, text=True)
    assert r.returncode == 0
    ids = {row["image_id"] for row in ws.sql("SELECT image_id FROM images").to_pylist()}
    for image_id in ids:  # 32 hex characters each, never cut with an ellipsis
        assert image_id in r.stdout
    assert "…" not in r.stdout and "..." not in r.stdout


def test_commands_run_too_early_say_what_to_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(skimage_data_dir() / "coffee.png", src / "a.png")
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    for names in (["flags"], ["sense"], ["all"]):
        with pytest.raises(ValueError, match="run `exokiratory scan` first"):
            ws.run(names, progress=False)
    ws.scan(progress=False)
    with pytest.raises(ValueError, match="run `exokiratory run embed-clip` first"):
        ws.search(text="a cup of coffee")
    with pytest.raises(ValueError, match="run `exokiratory run embed-dino` first"):
        ws.similar("0" * 32, space="dino")


def test_search_builds_its_index_on_demand(tmp_path: Path) -> None:
    ws = _scanned(tmp_path)
    ws.config.passes["embed-clip"] = {"model": "tiny", "routed_only": False}
    ws.run(["embed-clip"], workers=1, progress=False)
    assert not (Path(ws.storage.root) / "indices" / "clip.faiss").exists()
    (row,) = ws.similar(ws.images().column("image_id")[0].as_py(), k=1).to_dict("records")
    assert row["rank"] == 1 and (Path(ws.storage.root) / "indices" / "clip.faiss").exists()


def test_init_and_models_reject_bad_input_in_one_line(tmp_path: Path) -> None:
    from exokiratory.core.config import ConfigError
    from exokiratory.models.registry import resolve

    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        Workspace.init(a_file, [str(tmp_path)])
    with pytest.raises(ValueError, match=r"not a profile \(full, lite, tiny\)"):
        resolve("clip", "huge")


def test_the_python_api_runs_as_a_plain_script(tmp_path: Path) -> None:
    """No ``if __name__ == "__main__":`` guard: worker processes must not re-run the script."""
    import subprocess
    import sys

    ws = _scanned(tmp_path)
    script = tmp_path / "explore.py"
    script.write_text(
        "from exokiratory import Workspace\n"
        "print('SCRIPT-RAN')\n"
        f"ws = Workspace({str(ws.storage.root)!r})\n"
        "(r,) = ws.run(['sense'], workers=2, batch_size=1, progress=False)\n"
        "print('PROCESSED', r.processed, r.batches_failed)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("SCRIPT-RAN") == 1
    assert "PROCESSED 2 0" in out.stdout


def test_an_unreachable_object_store_is_one_error_line() -> None:
    import json
    import subprocess
    import sys

    pytest.importorskip("s3fs")
    options = {
        "endpoint_url": "http://127.0.0.1:9",  # loopback, nothing listens there
        "key": "k",
        "secret": "s",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    env = {**os.environ, "EXOKIRATORY_STORAGE_OPTIONS": json.dumps(options)}
    cmd = [sys.executable, "-m", "exokiratory", "status", "-w", "s3://no-bucket/ws"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the workspace")


def test_a_model_that_cannot_load_fails_fast_and_status_says_so(tmp_path: Path) -> None:
    import time

    ws = _scanned(tmp_path)
    ws.config.passes["embed-clip"] = {"model": "no-such-org/no-such-model", "routed_only": False}
    t0 = time.monotonic()
    (rep,) = ws.run(["embed-clip"], workers=1, progress=False)
    assert not rep.ok and time.monotonic() - t0 < 20  # one attempt, no minute of retries
    (st,) = [p for p in ws.status().passes if p.name == "embed-clip"]
    assert st.last_failure and "no-such-org/no-such-model" in st.last_failure
