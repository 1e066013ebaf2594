"""Export: every format read back with its own library gives the same ids and columns; a rerun
completes a killed export into the same bytes; vanished images are logged, not fatal; unknown
columns name the available ones; a bucket destination works through the storage layer."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from exokiratory import Workspace
from exokiratory.api.cli import app
from exokiratory.export.fiftyone import fiftyone_available
from exokiratory.passes.sample.columns import UnknownColumnError

from .sample_data import Truth, make_sample_workspace
from .test_kill import _kill_at

COLUMNS = ["modality", "is_text_heavy", "cluster_clip_l0", "text_heavy_score"]


@pytest.fixture(scope="module")
def ws_truth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Truth]:
    ws, truth = make_sample_workspace(tmp_path_factory.mktemp("export"))
    ws.sample("bal", 24)
    ws.sample("all", 200, rule="uniform")
    return ws, truth


def _sample(ws: Workspace, name: str) -> list[dict[str, object]]:
    return ws.sql(
        f"SELECT * FROM samples_current WHERE sample = '{name}' ORDER BY rank"
    ).to_pylist()


def _expected(ws: Workspace, name: str) -> list[dict[str, object]]:
    q = f"""SELECT s.image_id, f.modality, f.is_text_heavy, c.cluster_id AS cluster_clip_l0
            FROM samples_current s JOIN flags f USING (image_id)
            JOIN clusters_clip c ON c.image_id = s.image_id AND c.level = 0
            WHERE s.sample = '{name}' ORDER BY s.rank"""
    return ws.sql(q).to_pylist()


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes; links -> their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def test_manifest_round_trip(ws_truth: tuple[Workspace, Truth], tmp_path: Path) -> None:
    ws, _ = ws_truth
    rep = ws.export(str(tmp_path / "m"), to="manifest", sample="bal", columns=COLUMNS)
    assert rep.n_exported == 24 and rep.n_problems == 0
    table = pq.read_table(tmp_path / "m" / "manifest.parquet")
    want = _expected(ws, "bal")
    assert table.select(list(want[0])).to_pylist() == want
    for c in ("path", "width", "height", "sample", "version", "rank", "stratum", *COLUMNS):
        assert c in table.column_names
    with open(tmp_path / "m" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image_id"] for r in rows] == [w["image_id"] for w in want]
    assert [r["modality"] for r in rows] == [w["modality"] for w in want]
    assert all(Path(r["path"]).exists() for r in rows)
    log = (tmp_path / "m" / "export_log.csv").read_text().splitlines()
    assert len(log) == 1 and "problem" in log[0]  # header only


def test_files_symlinks_grouped_and_copies(
    ws_truth: tuple[Workspace, Truth], tmp_path: Path
) -> None:
    ws, _ = ws_truth
    members = _sample(ws, "bal")
    rep = ws.export(str(tmp_path / "links"), to="files", sample="bal", group_by="modality")
    assert rep.n_exported == 24
    manifest = pq.read_table(tmp_path / "links" / "manifest.parquet").to_pylist()
    assert [m["image_id"] for m in manifest] == [m["image_id"] for m in members]
    for m in manifest:
        f = tmp_path / "links" / m["file"]
        assert f.is_symlink() and f.parent.name == m["modality"]
        assert f.name == f"{m['image_id']}.png" and os.readlink(f) == m["path"]
    ws.export(str(tmp_path / "copies"), to="files", sample="bal", mode="copy")
    for m in manifest:
        copy = tmp_path / "copies" / f"{m['image_id']}.png"
        assert not copy.is_symlink() and copy.read_bytes() == Path(m["path"]).read_bytes()


def test_hf_round_trip(ws_truth: tuple[Workspace, Truth], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ws, _ = ws_truth
    rep = ws.export(str(tmp_path / "hf"), to="hf", sample="bal", columns=COLUMNS, shard_images=10)
    shards = sorted(p.name for p in (tmp_path / "hf" / "data").iterdir())
    assert shards == [f"train-0000{i}-of-00003.parquet" for i in range(3)] and rep.shards == 3
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "hf" / "data" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert isinstance(ds.features["image"], datasets.Image)
    want = _expected(ws, "bal")
    assert ds["image_id"] == [w["image_id"] for w in want]
    assert ds["modality"] == [w["modality"] for w in want]
    assert ds["cluster_clip_l0"] == [w["cluster_clip_l0"] for w in want]
    first = ds[0]
    assert first["image"].size == (16, 16)
    assert first["image"].tobytes() == __import__("PIL.Image").Image.open(first["path"]).tobytes()


def test_webdataset_round_trip_and_bucket(
    ws_truth: tuple[Workspace, Truth], tmp_path: Path
) -> None:
    wds = pytest.importorskip("webdataset")
    ws, _ = ws_truth
    rep = ws.export(
        str(tmp_path / "wds"), to="webdataset", sample="bal", columns=COLUMNS, shard_images=7
    )
    assert rep.shards == 4
    urls = [str(tmp_path / "wds" / f"shard-{i:06d}.tar") for i in range(4)]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    want = _expected(ws, "bal")
    assert [g["__key__"] for g in got] == [w["image_id"] for w in want]
    for g, w in zip(got, want, strict=True):
        meta = json.loads(g["json"])
        assert {k: meta[k] for k in w} == w and meta["rank"] == want.index(w)
        assert g["png"] == Path(meta["path"]).read_bytes()
    # the same export to a bucket (fsspec memory file system) through the storage layer
    import fsspec

    ws.export("memory://bucket/wds", to="webdataset", sample="bal", columns=COLUMNS, shard_images=7)
    fs = fsspec.filesystem("memory")
    for i, url in enumerate(urls):
        remote = fs.cat_file(f"/bucket/wds/shard-{i:06d}.tar")
        assert remote == Path(url).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(remote)) as tar:
            assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert fs.exists("/bucket/wds/export_log.csv")


def test_rerun_is_a_no_op_and_bad_input(ws_truth: tuple[Workspace, Truth], tmp_path: Path) -> None:
    ws, _ = ws_truth
    dest = str(tmp_path / "w")
    ws.export(dest, to="webdataset", sample="bal", shard_images=10)
    before = _tree(tmp_path / "w")
    again = ws.export(dest, to="webdataset", sample="bal", shard_images=10)
    assert again.shards_written == 0 and _tree(tmp_path / "w") == before
    with pytest.raises(ValueError, match="holds another export"):
        ws.export(dest, to="webdataset", sample="all", shard_images=10)
    with pytest.raises(UnknownColumnError, match=r"no_such.*available: .*modality"):
        ws.export(str(tmp_path / "x"), to="manifest", sample="bal", columns=["no_such"])
    with pytest.raises(ValueError, match="unknown export format"):
        ws.export(str(tmp_path / "x"), to="zip", sample="bal")
    with pytest.raises(ValueError, match="no sample 'nope'"):
        ws.export(str(tmp_path / "x"), to="manifest", sample="nope")
    rep = ws.export(str(tmp_path / "q"), to="manifest", where="is_text_heavy", columns=["is_*"])
    t = pq.read_table(tmp_path / "q" / "manifest.parquet")
    assert rep.n_exported == t.num_rows == 6 and set(t.column("is_text_heavy").to_pylist()) == {
        True
    }
    assert "is_junk" in t.column_names and "sample" not in t.column_names


def test_fiftyone_optional(ws_truth: tuple[Workspace, Truth], tmp_path: Path) -> None:
    ws, _ = ws_truth
    if not fiftyone_available():
        with pytest.raises(RuntimeError, match="needs FiftyOne"):
            ws.export(str(tmp_path / "fo"), to="fiftyone", sample="bal")
        assert not (tmp_path / "fo").exists()  # nothing written
        return
    import fiftyone as fo  # pragma: no cover - only where FiftyOne and its database run

    name = f"exo-test-{os.getpid()}"
    ws.export(str(tmp_path / "fo"), to="fiftyone", sample="bal", dataset_name=name)
    try:
        ds = fo.load_dataset(name)
        assert sorted(ds.values("image_id")) == sorted(m["image_id"] for m in _sample(ws, "bal"))
        assert "modality" in ds.get_field_schema() and "cluster_clip_l0" in ds.get_field_schema()
    finally:
        fo.delete_dataset(name)


def test_vanished_images_are_logged(tmp_path: Path) -> None:
    ws, truth = make_sample_workspace(tmp_path, n_dominant=12, rare=1, n_junk=0, n_dups=0)
    ws.sample("s", 16, rule="uniform")
    gone = sorted(truth.src.iterdir())[:2]
    for p in gone:
        p.unlink()
    for fmt in ("webdataset", "manifest", "files"):
        rep = ws.export(str(tmp_path / fmt), to=fmt, sample="s")
        assert (rep.n_selected, rep.n_exported, rep.n_problems) == (16, 14, 2), fmt
        with open(tmp_path / fmt / "export_log.csv", newline="") as fh:
            log = list(csv.DictReader(fh))
        assert sorted(r["path"] for r in log) == sorted(str(p) for p in gone)
        assert {r["problem"] for r in log} == {"missing"}
        assert "2 vanished or unreadable" in rep.summary()


def test_cli_export(ws_truth: tuple[Workspace, Truth], tmp_path: Path) -> None:
    ws, _ = ws_truth
    runner = CliRunner()
    dest = str(tmp_path / "cli")
    res = runner.invoke(
        app,
        [
            "export",
            "bal@1",
            dest,
            "--to",
            "manifest",
            "-c",
            "modality,is_text_heavy",
            "-w",
            ws.storage.url,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "export manifest of sample bal v1: 24 of 24 images" in res.output
    assert pq.read_table(Path(dest) / "manifest.parquet").num_rows == 24
    res = runner.invoke(app, ["export", dest, "--to", "manifest", "-w", ws.storage.url])
    assert res.exit_code != 0


def _cli(ws: Workspace, dest: Path) -> list[str]:
    return [
        sys.executable, "-m", "exokiratory", "-q", "export", "all", str(dest),
        "--to", "webdataset", "--shard-images", "2", "-c", "modality", "-w", ws.storage.url,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_export_then_rerun_is_identical(
    ws_truth: tuple[Workspace, Truth], tmp_path: Path
) -> None:
    ws, _ = ws_truth
    ref = tmp_path / "ref"
    ws.export(str(ref), to="webdataset", sample="all", columns=["modality"], shard_images=2)
    dest = tmp_path / "killed"
    logs = dest / ".exokiratory" / "log"
    rng = random.Random(7)
    states = []
    for _ in range(2):
        killed = _kill_at(
            _cli(ws, dest), rng.uniform(0.0, 1.0), lambda: len(list(logs.glob("*.parquet")))
        )
        states.append((killed, len(list(logs.glob("*.parquet")))))
    assert any(k and 0 < n < 81 for k, n in states), states  # really killed mid-export
    subprocess.run(_cli(ws, dest), check=True, capture_output=True, timeout=300)
    assert _tree(dest) == _tree(ref)  # same files, same bytes: nothing twice, nothing lost
    assert not [p for p in dest.rglob(".tmp-*")]
    shutil.rmtree(dest)
