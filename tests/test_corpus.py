"""The sample-collection generators: demo collection, hostile corpus and synthetic bulk."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from corpus import (
    BOMB_SIDE,
    HOSTILE_OUTCOMES,
    ODD_NAME,
    PNG_SIGNATURE,
    make_hostile_corpus,
    make_synthetic_collection,
    png_ihdr_size,
)
from PIL import Image, ImageOps

from exokiratory.demo.data import (
    DEMO_EXTRA_HINT,
    UNICODE_FOLDER,
    DemoItem,
    build_demo_collection,
)

DEMO_EXTRA_MISSING = any(importlib.util.find_spec(n) is None for n in ("skimage", "sklearn"))

MB = 1024 * 1024


def tree_digest(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every regular file, and -> 'link:<target>' for every symlink."""
    digest: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relpath = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest[relpath] = f"link:{path.readlink()}"
        elif path.is_file():
            digest[relpath] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def load_fully(path: Path) -> Image.Image:
    """Decode every frame of an image (read into memory first: no file handle is left open)."""
    img = Image.open(io.BytesIO(path.read_bytes()))
    for frame in range(getattr(img, "n_frames", 1)):
        img.seek(frame)
        img.load()
    img.seek(0)
    return img


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(type, data, stored CRC) of every chunk of a complete PNG."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        chunks.append((kind, body, crc))
        pos += 12 + length
    return chunks


# --------------------------------------------------------------------------- hostile corpus


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile_corpus(root)


def test_hostile_outcomes_are_known_and_all_present(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    assert set(expected.values()) == HOSTILE_OUTCOMES
    for relpath in expected:
        assert (root / relpath).is_symlink() or (root / relpath).is_file(), relpath
    assert not any(relpath.startswith("loop") for relpath in expected)


def test_hostile_ok_files_decode(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    ok = [relpath for relpath, outcome in expected.items() if outcome == "ok"]
    assert len(ok) >= 12
    for relpath in ok:
        with load_fully(root / relpath) as img:
            assert img.width >= 1 and img.height >= 1, relpath


def test_hostile_specimens_have_claimed_properties(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile

    def opened(name: str) -> Image.Image:
        return load_fully(root / name)

    assert opened("tiny_1x1.png").size == (1, 1)
    assert opened("wide_20000x20.png").size == (20000, 20)
    assert opened("cmyk.jpg").mode == "CMYK"
    assert opened("grey16.png").mode in ("I;16", "I")
    palette = opened("palette_alpha.png")
    assert palette.mode == "P" and "transparency" in palette.info
    assert opened("grey_alpha.png").mode == "LA"
    assert getattr(opened("animated.gif"), "n_frames", 1) == 3
    rotated = opened("exif_rotated.jpg")
    assert rotated.getexif()[0x0112] == 6
    assert rotated.size == (80, 40) and ImageOps.exif_transpose(rotated).size == (40, 80)
    assert opened("jpeg_named.png").format == "JPEG"
    assert opened("no_extension").format == "PNG"
    assert opened("UPPER_CASE.JPEG").format == "JPEG"
    assert opened(ODD_NAME).format == "PNG"
    assert any(ord(c) > 127 for c in ODD_NAME) and all(c in ODD_NAME for c in " #%?")


def test_hostile_failures_fail(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    assert (root / "empty.jpg").stat().st_size == 0
    jpeg = (root / "truncated.jpg").read_bytes()
    assert jpeg.startswith(b"\xff\xd8\xff") and b"\xff\xd9" not in jpeg[-4096:]
    png = (root / "truncated.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and b"IEND" not in png
    for relpath in ("truncated.jpg", "truncated.png"):
        with pytest.raises(OSError), Image.open(root / relpath) as img:
            img.load()
    for relpath in ("empty.jpg", "text_named.jpg"):
        assert expected[relpath] in ("empty", "not_image")
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(root / relpath)


def test_hostile_bomb_is_tiny_with_huge_valid_header(
    hostile: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, expected = hostile
    assert expected["bomb.png"] == "bomb"
    data = (root / "bomb.png").read_bytes()
    width, height = png_ihdr_size(data)
    assert (width, height) == (BOMB_SIDE, BOMB_SIDE) and width * height > 10**9
    assert len(data) < 10_000
    chunks = png_chunks(data)
    assert [kind for kind, _, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    for kind, body, crc in chunks:
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default guard
    with pytest.raises(Image.DecompressionBombError):
        Image.open(root / "bomb.png")


def test_hostile_symlinks(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    assert expected.get("dangling.jpg") == "broken_symlink"
    dangling = root / "dangling.jpg"
    assert dangling.is_symlink() and not dangling.exists()
    loop = root / "loop" / "self"
    assert (root / "loop").is_dir() and loop.is_symlink()
    assert loop.resolve() == root.resolve()


def test_hostile_corpus_is_deterministic_and_rewritable(tmp_path: Path) -> None:
    first, second = make_hostile_corpus(tmp_path / "a"), make_hostile_corpus(tmp_path / "b")
    assert first == second
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert make_hostile_corpus(tmp_path / "a") == first  # rewriting over itself works


# --------------------------------------------------------------------------- synthetic bulk


def test_synthetic_collection_distinct_nested_and_deterministic(tmp_path: Path) -> None:
    relpaths = make_synthetic_collection(tmp_path / "a", 250, seed=3)
    assert len(relpaths) == len(set(relpaths)) == 250
    digest = tree_digest(tmp_path / "a")
    assert sorted(digest) == sorted(relpaths)
    assert len(set(digest.values())) == 250  # all distinct
    assert Counter(Path(r).parent.as_posix() for r in relpaths).most_common(1)[0][1] == 100
    assert all(r.count("/") == 2 for r in relpaths)
    for relpath in relpaths[:20]:
        with load_fully(tmp_path / "a" / relpath) as img:
            assert 32 <= img.width <= 64 and 32 <= img.height <= 64
    assert make_synthetic_collection(tmp_path / "b", 250, seed=3) == relpaths
    assert tree_digest(tmp_path / "b") == digest
    make_synthetic_collection(tmp_path / "c", 250, seed=4)
    assert set(tree_digest(tmp_path / "c").values()).isdisjoint(digest.values())


def test_synthetic_collection_duplicates(tmp_path: Path) -> None:
    relpaths = make_synthetic_collection(tmp_path, 100, seed=0, dup_every=10)
    hashes = [hashlib.sha256((tmp_path / r).read_bytes()).hexdigest() for r in relpaths]
    for index, sha in enumerate(hashes):
        is_dup = (index + 1) % 10 == 0
        assert (sha in hashes[:index]) == is_dup, index
    assert len(set(hashes)) == 90


def test_synthetic_collection_of_3000(tmp_path: Path) -> None:
    # how fast it is, is bench/scan_throughput.py's business (no timed assertions in tests)
    relpaths = make_synthetic_collection(tmp_path, 3000, dup_every=50)
    assert len(relpaths) == 3000


def test_synthetic_collection_rejects_negative_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_synthetic_collection(tmp_path, -1)
    with pytest.raises(ValueError):
        make_synthetic_collection(tmp_path, 5, seed=-1)


def test_demo_rejects_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        build_demo_collection(tmp_path, seed=-1)


# --------------------------------------------------------------------------- demo collection


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DemoItem], float]:
    if DEMO_EXTRA_MISSING:
        pytest.skip(DEMO_EXTRA_HINT)
    root = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    items = build_demo_collection(root, seed=0)
    return root, items, time.perf_counter() - start


def test_demo_is_small_and_complete(demo: tuple[Path, list[DemoItem], float]) -> None:
    root, items, _seconds = demo
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 15 * MB
    assert 60 <= len(items) <= 120
    assert sorted(p.relative_to(root).as_posix() for p in files) == sorted(i.relpath for i in items)
    assert len({i.relpath for i in items}) == len(items)
    for folder in ("photos", "scans", "graphics", "dupes", "broken", UNICODE_FOLDER):
        assert (root / folder).is_dir(), folder
    assert any(ord(c) > 127 for c in UNICODE_FOLDER)
    assert any(i.relpath.startswith(UNICODE_FOLDER + "/") for i in items)


def test_demo_items_are_consistent(demo: tuple[Path, list[DemoItem], float]) -> None:
    _, items, _ = demo
    kinds = Counter(i.kind for i in items)
    assert kinds["exact_duplicate"] >= 2 and 6 <= kinds["near_duplicate"] <= 10
    assert kinds["broken"] >= 5 and kinds["other"] == 1
    assert kinds["photo"] >= 10 and kinds["scan"] >= 5 and kinds["graphic"] >= 5
    by_path = {i.relpath: i for i in items}
    for item in items:
        is_dup = item.kind in ("exact_duplicate", "near_duplicate")
        assert (item.duplicate_of is not None) == is_dup, item
        if item.duplicate_of is not None:
            original = by_path[item.duplicate_of]
            assert (
                original.kind in ("photo", "scan", "graphic") and original.expected_status == "ok"
            )
        expected_status = {"broken": "unreadable", "other": None}.get(item.kind, "ok")
        assert item.expected_status == expected_status, item
        assert item.note, item


def test_demo_statuses_match_files(demo: tuple[Path, list[DemoItem], float]) -> None:
    root, items, _ = demo
    for item in items:
        path = root / item.relpath
        if item.expected_status == "ok":
            with load_fully(path) as img:
                assert img.width >= 1, item
        else:
            with pytest.raises((OSError, SyntaxError)), Image.open(path) as img:
                img.load()
    other = next(i for i in items if i.kind == "other")
    assert Path(other.relpath).suffix == ".txt" and "ignore" in other.note


def test_demo_duplicates(demo: tuple[Path, list[DemoItem], float]) -> None:
    root, items, _ = demo
    for item in items:
        if item.duplicate_of is None:
            continue
        same = (root / item.relpath).read_bytes() == (root / item.duplicate_of).read_bytes()
        assert same == (item.kind == "exact_duplicate"), item
        assert item.relpath != item.duplicate_of


def test_demo_has_the_required_specimens(demo: tuple[Path, list[DemoItem], float]) -> None:
    root, items, _ = demo
    seen: Counter[str] = Counter()
    for item in items:
        if item.expected_status != "ok":
            continue
        with load_fully(root / item.relpath) as img:
            seen[f"format:{img.format}"] += 1
            seen[f"mode:{img.mode}"] += 1
            seen[f"size:{img.width}x{img.height}"] += 1
            if getattr(img, "n_frames", 1) == 3:
                seen["animated3"] += 1
            if img.mode == "P" and "transparency" in img.info:
                seen["palette+transparency"] += 1
            if img.getexif().get(0x0112) == 6:
                seen["orientation6"] += 1
    for key in ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"):
        assert seen[f"format:{key}"] >= 1, key
    assert seen["mode:CMYK"] == 1 and seen["mode:LA"] >= 1
    assert seen["mode:I;16"] + seen["mode:I"] >= 1
    assert seen["size:1x1"] == 1 and seen["size:2000x20"] == 1
    assert seen["size:1200x1600"] >= 2
    for key in ("animated3", "palette+transparency", "orientation6"):
        assert seen[key] >= 1, key


def test_demo_broken_files(demo: tuple[Path, list[DemoItem], float]) -> None:
    root, _, _ = demo
    assert (root / "broken" / "empty.jpg").stat().st_size == 0
    jpeg = (root / "broken" / "truncated.jpg").read_bytes()
    assert jpeg.startswith(b"\xff\xd8\xff") and b"\xff\xd9" not in jpeg[-4096:]
    png = (root / "broken" / "truncated.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and b"IEND" not in png
    assert not (root / "broken" / "random_bytes.png").read_bytes().startswith(PNG_SIGNATURE)


def test_demo_is_deterministic(demo: tuple[Path, list[DemoItem], float], tmp_path: Path) -> None:
    root, items, _ = demo
    again = build_demo_collection(tmp_path / "again", seed=0)
    assert again == items
    assert tree_digest(tmp_path / "again") == tree_digest(root)


def test_demo_seed_changes_generated_content(
    demo: tuple[Path, list[DemoItem], float], tmp_path: Path
) -> None:
    root, items, _ = demo
    other = build_demo_collection(str(tmp_path / "other"), seed=1)
    assert [i.relpath for i in other] == [i.relpath for i in items]
    first, second = tree_digest(root), tree_digest(tmp_path / "other")
    assert first["photos/astronaut.jpg"] == second["photos/astronaut.jpg"]
    assert first["scans/letters/letter_01.jpg"] != second["scans/letters/letter_01.jpg"]


def test_demo_without_extra_raises_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, package: str | None = None) -> object:
        return None if name == "sklearn" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(RuntimeError, match=r"exokiratory\[demo\]"):
        build_demo_collection(tmp_path)
    assert not any(tmp_path.iterdir())
