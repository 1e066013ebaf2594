"""XPM files (X PixMap, a C source text that Pillow reads) are images for the scan (issue 17)."""

from __future__ import annotations

from pathlib import Path

from exokiratory import Workspace
from exokiratory.passes.scan.sniff import HEAD_BYTES, IMAGE_EXTENSIONS, sniff_format

# 8 x 4 px, three colours, one of them transparent ("None"); Pillow cannot write XPM
XPM = b"""/* XPM */
static char *tiny[] = {
"8 4 3 1",
"  c None",
". c #FF0000",
"+ c #0000FF",
"........",
"..++++..",
"..++++..",
"        "
};
"""


def test_sniff_knows_xpm() -> None:
    assert sniff_format(XPM[:HEAD_BYTES]) == "XPM" and ".xpm" in IMAGE_EXTENSIONS
    assert sniff_format(b"/* a C comment */ int x;") is None


def test_an_xpm_file_is_scanned_and_sensed_as_an_image(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.xpm").write_bytes(XPM)
    (src / "icon_without_extension").write_bytes(XPM.replace(b"tiny", b"icon"))
    (src / "broken.xpm").write_text("not a pixmap\n")
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    ws.scan()
    images = {Path(r["first_path"]).name: r for r in ws.images().to_pylist()}
    for name in ("tiny.xpm", "icon_without_extension"):
        r = images[name]
        assert (r["status"], r["format"], r["width"], r["height"]) == ("ok", "XPM", 8, 4), r
    broken = images["broken.xpm"]  # an .xpm that is not one: an unreadable image row
    assert broken["status"] == "unreadable" and "not an image" in broken["error"]
    ws.run("sense", workers=1)
    feats = ws.sql(
        "SELECT f.*, i.first_path FROM features f JOIN images i USING (image_id)"
    ).to_pylist()
    tiny = next(f for f in feats if f["first_path"].endswith("tiny.xpm"))
    assert tiny["error"] is None and tiny["format"] == "XPM" and tiny["has_alpha"]
    assert tiny["transparent_fraction"] == 8 / 32  # the "None" row
    assert tiny["mean_r"] > tiny["mean_b"] > 0  # red and blue pixels, white where transparent
