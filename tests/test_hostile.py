"""Every hostile file ends as a row with a clear status; nothing crashes (scan and probe)."""

from __future__ import annotations

import os
from pathlib import Path

from exokiratory import Workspace

from .corpus import make_hostile_corpus

REASON = {
    "empty": "empty file",
    "truncated": "truncated",
    "not_image": "not an image",
    "bomb": "decompression bomb",
}


def test_hostile_corpus_rows(tmp_path: Path) -> None:
    src = tmp_path / "hostile"
    expected = make_hostile_corpus(src)
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    ws.scan()
    paths = {os.path.relpath(r["path"], src): r for r in ws.paths().to_pylist()}
    images = {r["image_id"]: r for r in ws.images().to_pylist()}
    assert set(expected) <= set(paths), set(expected) - set(paths)
    assert not any(p.startswith("loop") for p in paths)  # the symlink loop holds nothing
    for rel, outcome in expected.items():
        prow = paths[rel]
        if outcome == "broken_symlink":
            assert prow["status"] == "error" and "broken symbolic link" in prow["error"], rel
            continue
        assert prow["status"] == "image", rel
        img = images[prow["image_id"]]
        if outcome == "ok":
            assert img["status"] == "ok" and img["error"] is None, (rel, img)
        else:
            assert img["status"] == "unreadable", (rel, img)
            assert REASON[outcome] in img["error"], (rel, img["error"])

    # a full decode over every readable image: one row each, errors are rows
    reports = ws.run("probe", workers=1)
    assert reports[0].ok
    probe = {r["image_id"]: r for r in ws.table("probe").to_pylist()}
    n_ok = sum(1 for r in images.values() if r["status"] == "ok")
    assert len(probe) == n_ok
    rotated = probe[paths["exif_rotated.jpg"]["image_id"]]
    assert rotated["exif_orientation"] == 6
    anim = probe[paths["animated.gif"]["image_id"]]
    assert anim["n_frames"] == 3


def test_bomb_limit_is_configurable(tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (100, 100)).save(src / "big.png")
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    cfg = tmp_path / "ws" / "exokiratory.yaml"
    cfg.write_text(cfg.read_text().replace("max_image_pixels: 178956970", "max_image_pixels: 9999"))
    ws = Workspace(tmp_path / "ws")
    ws.scan()
    (row,) = ws.images().to_pylist()
    assert (
        row["status"] == "unreadable"
        and "100x100 = 10000 px exceeds max_image_pixels=9999" in row["error"]
    )
