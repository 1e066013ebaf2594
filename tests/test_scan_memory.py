"""The columnar scanner (Arrow listing, DuckDB plan and vanished-path joins, IdSet membership)
against an independent model of what PASS 0 must record, on a few thousand files with moves,
duplicates, vanished files, changed files, unreadable files and an unavailable source; plus an
interrupted scan resumed, and the two small structures on their own.

The chunk and merge sizes are made tiny so that every scan crosses many listing chunks and many
IdSet merges (the code paths that bound memory at 10^7 files)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from exokiratory import Workspace
from exokiratory.core.catalog import Catalog
from exokiratory.core.config import ScanConfig
from exokiratory.passes.scan import idset as idset_mod
from exokiratory.passes.scan import scanner as scan_mod
from exokiratory.passes.scan import walk as walk_mod
from exokiratory.passes.scan.idset import IdSet, ids_from_arrow
from exokiratory.passes.scan.inspect import FileInfo, inspect_file
from exokiratory.passes.scan.walk import ListingBuilder

BATCH = 100
FLAKY = "/a01/"  # files under this folder whose name ends in 5.jpg fail to read while flaky


class Killed(Exception):
    """A scan stopped between two commits."""


class Model:
    """What the manifest must hold, computed from the files alone (no scanner code)."""

    def __init__(self) -> None:
        self.paths: dict[str, dict[str, Any]] = {}
        self.images: dict[str, tuple[int, str]] = {}  # image_id -> (image_idx, first_path)

    def scan(self, sources: list[Path], flaky: bool) -> dict[str, int]:
        rep = dict.fromkeys(
            ("files_seen", "unchanged", "inspected", "new_images", "known_content"), 0
        )
        rep.update(ignored=0, errors=0, missing=0)
        todo = 0
        for src in sources:
            if not src.is_dir():
                continue
            listing = _list(src)
            rep["files_seen"] += len(listing)
            for path, size, mtime, error in listing:
                old = self.paths.get(path)
                same = old is not None and (old["size_bytes"], old["mtime_ns"]) == (size, mtime)
                if same and error is None and old["status"] not in ("error", "missing"):
                    rep["unchanged"] += 1
                    continue
                todo += 1
                self._read(str(src), path, size, mtime, error, flaky, rep)
            walked = {p for p, *_ in listing}
            for path, row in self.paths.items():
                if row["source"] == str(src) and row["status"] != "missing" and path not in walked:
                    row["status"] = "missing"
                    rep["missing"] += 1
        rep["inspected"] = todo
        rep["batches"] = -(-todo // BATCH)
        return rep

    def _read(
        self,
        source: str,
        path: str,
        size: int | None,
        mtime: int | None,
        error: str | None,
        flaky: bool,
        rep: dict[str, int],
    ) -> None:
        image_id = None
        if error is not None or (flaky and FLAKY in path and path.endswith("5.jpg")):
            status = "error"
            rep["errors"] += 1
        elif path.endswith(".txt"):
            status = "ignored"
            rep["ignored"] += 1
        else:  # not image bytes, an image extension: an unreadable image with an ID
            status = "image"
            image_id = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]
            if image_id in self.images:
                rep["known_content"] += 1
            else:
                self.images[image_id] = (len(self.images), path)
                rep["new_images"] += 1
        self.paths[path] = {
            "source": source,
            "image_id": image_id,
            "size_bytes": size,
            "mtime_ns": mtime,
            "status": status,
        }

    def tables(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        images = sorted((idx, i, p) for i, (idx, p) in self.images.items())
        paths = sorted(
            (p, r["source"], r["image_id"], r["size_bytes"], r["mtime_ns"], r["status"])
            for p, r in self.paths.items()
        )
        return images, paths


def _list(src: Path) -> list[tuple[str, int | None, int | None, str | None]]:
    out: list[tuple[str, int | None, int | None, str | None]] = []
    for folder, _, files in os.walk(src):
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) and not os.path.exists(path):
                out.append((path, None, None, f"broken symbolic link -> {os.readlink(path)}"))
            elif stat.S_ISFIFO(st.st_mode):
                out.append((path, None, None, "not a regular file: named pipe (FIFO)"))
            else:
                out.append((path, st.st_size, st.st_mtime_ns, None))
    return sorted(out)


def _actual(ws: Workspace) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with Catalog(ws.storage) as cat:
        images = cat.rows(
            "SELECT image_idx, image_id, first_path FROM images_registry ORDER BY image_idx"
        )
        paths = cat.rows(
            "SELECT path, source, image_id, size_bytes, mtime_ns, status FROM paths ORDER BY path"
        )
    return images, paths


def _report(ws: Workspace) -> dict[str, int]:
    rep = scan_mod.Scanner(ws.storage, ws.config, progress=False).run()
    return {
        k: getattr(rep, k)
        for k in (
            *("files_seen", "unchanged", "inspected", "new_images", "known_content"),
            *("ignored", "errors", "missing", "batches"),
        )
    }


def _collection(root: Path) -> tuple[Path, Path]:
    """~2,000 files in folders of 100 (every 50th a non-image .txt, 60 exact duplicates) and a
    second source of 200."""
    one, two = root / "s1", root / "s2"
    for i in range(2000):
        folder = one / f"a{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        ext = ".txt" if i % 50 == 7 else ".jpg"
        (folder / f"{i:05d}{ext}").write_bytes(f"content {i % 1940}".encode())
    for i in range(200):
        folder = two / f"b{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(f"content {i * 7}".encode())
    return one, two


def _mutate(root: Path, one: Path) -> None:
    """A move, copies, deletions, changed contents, a broken link and a FIFO."""
    shutil.move(str(one / "a03"), str(one / "z03"))  # a move: known content, old paths missing
    (one / "dup").mkdir()
    for i in range(400, 430):
        if i % 50 != 7:  # those are .txt files
            shutil.copy(one / "a04" / f"{i:05d}.jpg", one / "dup" / f"{i:05d}.jpg")
    for i in range(500, 540):
        (one / "a05" / f"{i:05d}.jpg").unlink(missing_ok=True)
    for i in range(700, 720):  # a longer content: a new size, a new ID
        target = one / "a07" / f"{i:05d}.jpg"
        if target.exists():
            target.write_bytes(f"changed {i} content".encode())
    os.symlink(root / "nowhere", one / "a00" / "broken.jpg")
    os.mkfifo(one / "a00" / "pipe.jpg")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Tiny listing chunks and IdSet merges; reads under FLAKY fail while ``flaky`` is set."""
    monkeypatch.setattr(walk_mod, "CHUNK_ROWS", 64)
    monkeypatch.setattr(idset_mod, "MERGE_AT", 16)
    state = {"flaky": True}

    def inspect(path: str, fs: Any, max_pixels: int) -> FileInfo:
        if state["flaky"] and FLAKY in path and path.endswith("5.jpg"):
            return FileInfo("error", error="cannot read: flaky")
        return inspect_file(path, fs, max_pixels)

    monkeypatch.setattr(scan_mod, "inspect_file", inspect)
    return state


def test_columnar_scan_matches_the_model(tmp_path: Path, small_chunks: dict[str, bool]) -> None:
    one, two = _collection(tmp_path)
    ws = Workspace.init(
        tmp_path / "ws", [str(one), str(two)], scan=ScanConfig(batch_size=BATCH, hash_workers=2)
    )
    model = Model()
    steps = ["first scan", "after moves, copies, deletions", "source gone", "unchanged"]
    for step in steps:
        if step == steps[1]:
            _mutate(tmp_path, one)
            small_chunks["flaky"] = False  # the errored files are read again, and succeed
        elif step == steps[2]:
            shutil.rmtree(two)  # unavailable: its paths stay as they were
            shutil.rmtree(one / "a09")
        expected = model.scan([one, two], small_chunks["flaky"])
        assert _report(ws) == expected, step
        assert _actual(ws) == model.tables(), step
    assert expected["inspected"] == 2  # only the broken link and the FIFO are read again
    # image parts: one per batch with new images, named by their dense, contiguous idx range
    parts = sorted(os.listdir(ws.storage.path("manifests/images")))
    ranges = [tuple(int(x) for x in p[5:-8].split("-")) for p in parts]
    assert [a for a, _ in ranges] == [0] + [b + 1 for _, b in ranges[:-1]]
    assert ranges[-1][1] == len(model.images) - 1


def test_interrupted_scans_resume_to_the_same_tables(
    tmp_path: Path, small_chunks: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    small_chunks["flaky"] = False
    one, two = _collection(tmp_path)
    cfg = ScanConfig(batch_size=BATCH, hash_workers=2)
    ref = Workspace.init(tmp_path / "ref", [str(one), str(two)], scan=cfg)
    _report(ref)
    ws = Workspace.init(tmp_path / "ws", [str(one), str(two)], scan=cfg)
    real = scan_mod.Scanner._write_paths
    calls = {"n": 0}

    def dies_on_every_7th(self: scan_mod.Scanner, rows: list[dict[str, Any]]) -> int:
        calls["n"] += 1
        if calls["n"] % 7 == 0:  # the images of this batch are committed, its paths are not
            raise Killed
        return real(self, rows)

    monkeypatch.setattr(scan_mod.Scanner, "_write_paths", dies_on_every_7th)
    for _ in range(50):
        try:
            _report(ws)
            break
        except Killed:
            continue  # the lock is released on the way out; the rerun resumes
    assert calls["n"] > 7 and _actual(ws) == _actual(ref)


def test_listing_is_sorted_like_python() -> None:
    names = ["a/b", "a-c", "a", "é/x", "e/x", "z", "a/b/c", "\U0001f600", "A", "a b", "a.b"]
    builder = ListingBuilder(chunk_rows=3)
    for i, name in enumerate(names):
        builder.add(name, i, i)
    table = builder.sorted_table()
    assert table["path"].to_pylist() == sorted(names)
    assert table["size_bytes"].to_pylist() == [names.index(n) for n in sorted(names)]
    assert table["path"].num_chunks == 1


def test_idset_membership_and_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idset_mod, "MERGE_AT", 5)
    rng = np.random.default_rng(0)
    ids = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)).hex() for _ in range(60)]
    ids += ["01" + "00" * 15, "00" * 16, "0001" + "00" * 14, "00" * 15 + "01"]  # zero tails
    base = ids_from_arrow(pa.array([bytes.fromhex(i) for i in ids[:30]], pa.binary()))
    known = IdSet([base])
    for image_id in ids[30:]:
        assert image_id not in known
        known.add(image_id)
        assert image_id in known
    known.add(ids[0])  # already there: no change
    assert len(known) == len(ids) and all(i in known for i in ids)
    known.merge()
    assert len(known) == len(ids) and all(i in known for i in ids)
    assert "02" + "00" * 15 not in known and "00" * 14 + "0100" not in known
    with pytest.raises(ValueError, match="32 hex digits"):
        known.add("abcd")
