from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from exokiratory import Workspace
from exokiratory.core.layout import SCAN_LOCK
from exokiratory.core.lock import LeaseLock, LockHeld
from exokiratory.passes.scan import scanner as scan_mod

from .conftest import table_rows


def _ws(tmp_path: Path, *sources: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws", [str(s) for s in sources])


def test_ids_are_sha256_prefix_and_idx_dense(tmp_path: Path, photos: Path) -> None:
    ws = _ws(tmp_path, photos)
    rep = ws.scan()
    assert rep.new_images == 5 and rep.inspected == 5
    imgs = ws.images().to_pylist()
    assert [r["image_idx"] for r in imgs] == list(range(5))
    for r in imgs:
        data = Path(r["first_path"]).read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["image_id"] == r["sha256"][:32]
        assert r["status"] == "ok" and r["width"] > 0 and r["format"] in ("PNG", "JPEG")
    # idx follows sorted path order within the scan
    paths = [r["first_path"] for r in imgs]
    assert paths == sorted(paths)


def test_rescan_of_unchanged_collection_reads_nothing(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _ws(tmp_path, photos)
    ws.scan()
    calls: list[str] = []
    real = scan_mod.inspect_file
    monkeypatch.setattr(
        scan_mod, "inspect_file", lambda p, fs, mp: calls.append(p) or real(p, fs, mp)
    )
    rep = ws.scan()
    assert calls == [] and rep.unchanged == 5 and rep.new_images == 0


def test_exact_duplicates_share_one_id(tmp_path: Path, photos: Path) -> None:
    shutil.copy(photos / "astronaut.png", photos / "copy of astronaut.png")
    ws = _ws(tmp_path, photos)
    rep = ws.scan()
    assert rep.new_images == 5 and rep.known_content == 1
    img = ws.sql("SELECT image_id, n_paths FROM images WHERE n_paths = 2").to_pylist()
    assert len(img) == 1
    assert ws.status().exact_duplicate_paths == 1


def test_moved_and_renamed_collection_keeps_ids_and_idx(tmp_path: Path, photos: Path) -> None:
    ws = _ws(tmp_path, tmp_path / "lib")
    (tmp_path / "lib").mkdir()
    shutil.move(photos, tmp_path / "lib" / "before")
    ws.scan()
    before = {r["image_id"]: r["image_idx"] for r in ws.images().to_pylist()}
    # move everything to new names and folders
    (tmp_path / "lib" / "after" / "deeper").mkdir(parents=True)
    for i, f in enumerate(sorted((tmp_path / "lib" / "before").rglob("*.*"))):
        shutil.move(f, tmp_path / "lib" / "after" / "deeper" / f"renamed-{i}{f.suffix}")
    rep = ws.scan()
    assert rep.new_images == 0 and rep.known_content == 5 and rep.missing == 5
    after = {r["image_id"]: (r["image_idx"], r["status"]) for r in ws.images().to_pylist()}
    assert {k: v[0] for k, v in after.items()} == before
    assert {v[1] for v in after.values()} == {"ok"}


def test_changed_file_gets_new_id_and_old_id_stays(tmp_path: Path, photos: Path) -> None:
    ws = _ws(tmp_path, photos)
    ws.scan()
    target = photos / "astronaut.png"
    old_id = hashlib.sha256(target.read_bytes()).hexdigest()[:32]
    shutil.copy(photos / "sub" / "coffee.png", target)  # same path, other content
    os.utime(target, ns=(1, 2_000_000_000))
    rep = ws.scan()
    assert rep.inspected == 1 and rep.new_images == 0 and rep.known_content == 1
    rows = {r["image_id"]: r for r in ws.images().to_pylist()}
    assert rows[old_id]["status"] == "missing"  # no path holds it any more
    assert len(rows) == 5


def test_deleted_file_is_marked_missing_never_removed(tmp_path: Path, photos: Path) -> None:
    ws = _ws(tmp_path, photos)
    ws.scan()
    (photos / "rocket.jpg").unlink()
    rep = ws.scan()
    assert rep.missing == 1
    statuses = {Path(r["first_path"]).name: r["status"] for r in ws.images().to_pylist()}
    assert statuses["rocket.jpg"] == "missing"
    assert len(statuses) == 5
    # coming back restores it, same id and idx
    from .conftest import skimage_data_dir

    shutil.copy(skimage_data_dir() / "rocket.jpg", photos / "rocket.jpg")
    ws.scan()
    statuses = {Path(r["first_path"]).name: r["status"] for r in ws.images().to_pylist()}
    assert statuses["rocket.jpg"] == "ok"


def test_unavailable_source_marks_nothing_missing(tmp_path: Path, photos: Path) -> None:
    ws = _ws(tmp_path, photos)
    ws.scan()
    shutil.move(photos, tmp_path / "unmounted")  # e.g. Drive not mounted in a new kernel
    rep = ws.scan()
    assert rep.unavailable_sources and rep.missing == 0
    assert {r["status"] for r in ws.images().to_pylist()} == {"ok"}


def test_symlink_loops_and_broken_links(tmp_path: Path, photos: Path) -> None:
    (photos / "loop").mkdir()
    os.symlink("..", photos / "loop" / "parent")
    os.symlink("nowhere.jpg", photos / "dangling.jpg")
    os.symlink(photos / "rocket.jpg", photos / "linked.jpg")
    ws = _ws(tmp_path, photos)
    rep = ws.scan()
    assert rep.new_images == 5
    paths = {Path(r["path"]).name: r for r in ws.paths().to_pylist()}
    assert paths["dangling.jpg"]["status"] == "error"
    assert "broken symbolic link" in paths["dangling.jpg"]["error"]
    assert paths["linked.jpg"]["status"] == "image"


def test_file_removed_mid_scan_is_a_row(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = scan_mod.inspect_file

    def vanish(path: str, fs: object, max_pixels: int):  # type: ignore[no-untyped-def]
        if path.endswith("coffee.png"):
            os.unlink(path)
        return real(path, fs, max_pixels)

    monkeypatch.setattr(scan_mod, "inspect_file", vanish)
    ws = _ws(tmp_path, photos)
    rep = ws.scan()
    assert rep.errors == 1 and rep.new_images == 4
    row = next(r for r in ws.paths().to_pylist() if r["path"].endswith("coffee.png"))
    assert row["status"] == "error" and "vanished" in row["error"]


def test_non_images_are_decided_by_magic_bytes(tmp_path: Path, photos: Path) -> None:
    (photos / "notes.txt").write_text("hello")
    (photos / "fake.jpg").write_text("not a jpeg")
    shutil.copy(photos / "rocket.jpg", photos / "really-a-jpeg.png")
    shutil.copy(photos / "sub" / "coffee.png", photos / "no_extension")
    ws = _ws(tmp_path, photos)
    rep = ws.scan()
    assert rep.ignored == 1
    by_name = {Path(r["path"]).name: r for r in ws.paths().to_pylist()}
    assert by_name["notes.txt"]["status"] == "ignored"
    fake = ws.sql("SELECT status, error FROM images WHERE first_path LIKE '%fake.jpg'").to_pylist()[
        0
    ]
    assert fake["status"] == "unreadable" and "not an image" in fake["error"]
    # a JPEG named .png and a PNG without extension are exact duplicates of registered photos
    assert by_name["really-a-jpeg.png"]["image_id"] == by_name["rocket.jpg"]["image_id"]
    assert by_name["no_extension"]["status"] == "image"


def test_scan_lock(tmp_path: Path, photos: Path) -> None:
    ws = _ws(tmp_path, photos)
    lock = LeaseLock(ws.storage, SCAN_LOCK, ttl_seconds=60)
    lock.acquire()
    try:
        with pytest.raises(LockHeld, match="another scan is running"):
            ws.scan()
    finally:
        lock.release()
    ws.scan()


def test_stale_lock_of_dead_process_is_taken_over(tmp_path: Path, photos: Path) -> None:
    import json
    import socket

    ws = _ws(tmp_path, photos)
    dead = {
        "host": socket.gethostname(),
        "pid": 2**22 + 12345,
        "started": 0.0,
        "heartbeat": 9e12,
        "token": "x",
    }
    (tmp_path / "ws" / SCAN_LOCK).write_text(json.dumps(dead))
    assert ws.scan().new_images == 5


def test_memory_filesystem_source_and_workspace(photos: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in sorted(photos.rglob("*.*")):
        fs.pipe_file(f"/exo-src-{os.getpid()}/{f.relative_to(photos)}", f.read_bytes())
    ws = Workspace.init(f"memory://exo-ws-{os.getpid()}", [f"memory://exo-src-{os.getpid()}"])
    rep = ws.scan()
    assert rep.new_images == 5
    assert ws.scan().unchanged == 5
    assert [r["format"] for r in ws.images().to_pylist()].count("PNG") == 4
    reports = ws.run("probe", workers=1)
    assert reports[0].processed == 5
    assert ws.sql("SELECT count(*) AS n FROM probe WHERE error IS NULL").to_pylist() == [{"n": 5}]


def test_paths_table_has_no_duplicates_after_repeated_scans(tmp_path: Path, photos: Path) -> None:
    ws = _ws(tmp_path, photos)
    for _ in range(3):
        ws.scan()
    rows = table_rows(ws.paths(), drop=("seen_at",))
    assert len(rows) == len(set(rows)) == 5
