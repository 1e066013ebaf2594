"""Semantic flags on labelled real images: text-heavy, human present, modality; cues throughput.

Collection (bench/_labelled.py): scikit-image / scikit-learn photos (photo), Debian's PDF
manuals rendered with pdftoppm plus the demo's rendered pages (scan), the demo's generated
graphics (graphic), scikit-image's lfw_subset face / non-face crops (faces only). It runs the
real pipeline (scan, sense, cues, flags) in a temporary workspace, then evaluates the rules of
:mod:`exokiratory.passes.flags.semantic` on the stored inputs twice: PASS 1 alone, and PASS 1 + the
detector cues (the flags table must equal the second). Zero-shot CLIP cannot be measured here
(no real weights offline): only the PASS 1 + detector part is.

Throughput: the cues pass (one worker) vs a plain full decode (PIL open + RGB) of the same
files, in images/s, measured in this run.

    python bench/semantic_flags_agreement.py            # needs poppler-utils for the PDF pages
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _labelled import Labelled, build_labelled

from exokiratory import Workspace
from exokiratory.passes.flags.rules import FlagsParams
from exokiratory.passes.flags.semantic import (
    PASS1_COLUMNS,
    align_inputs,
    semantic_flag_columns,
    semantic_inputs_sql,
)


def pr(pred: np.ndarray, truth: np.ndarray) -> str:
    tp = int((pred & truth).sum())
    p = tp / max(int(pred.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    return f"P {p:.2f} R {r:.2f} (tp {tp}, fp {int((pred & ~truth).sum())}, fn {int((~pred & truth).sum())})"


def plain_decode_rate(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(io.BytesIO(p.read_bytes())) as im:
            im.convert("RGB").load()
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", help="build the workspace here instead of a temporary folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        items = build_labelled(root / "images")
        ws = Workspace.init(root / "ws", [str(root / "images")], exist_ok=True)
        ws.scan(progress=False)
        ws.run(["sense"], progress=False)
        paths = [it.path for it in items]
        decode_rate = plain_decode_rate(paths)
        t0 = time.perf_counter()
        (rep,) = ws.run(["cues"], workers=1, progress=False)
        cues_s = time.perf_counter() - t0
        n_cues = rep.processed  # type: ignore[union-attr]
        ws.run(["flags"], progress=False)
        evaluate(ws, items)
        print(
            f"\ncues pass, 1 worker: {n_cues / cues_s:.2f} images/s ({n_cues} images, "
            f"{cues_s:.1f} s); plain decode (PIL, full size): {decode_rate:.1f} images/s; "
            f"ratio decode/cues = {decode_rate / (n_cues / cues_s):.1f}x"
        )


def evaluate(ws: Workspace, items: list[Labelled]) -> None:
    # image_id = the first 32 hex of the SHA-256 of the bytes (byte-identical copies: one image)
    label = {hashlib.sha256(it.path.read_bytes()).hexdigest()[:32]: it for it in items}
    cols = ", ".join(f"f.{c}" for c in PASS1_COLUMNS)
    with ws.catalog() as cat:
        t = cat.query(
            f"SELECT f.image_id, {cols} FROM features f WHERE f.error IS NULL ORDER BY image_idx"
        )
        sql = semantic_inputs_sql(cat.views)
        assert sql is not None
        inputs = align_inputs(t["image_id"], cat.query(sql))
        flags = cat.query("SELECT * FROM flags").to_pylist()
    p = FlagsParams()
    sensed = np.ones(t.num_rows, bool)
    variants = {
        "PASS 1 only": semantic_flag_columns(t, p, sensed, None),
        "PASS 1 + detectors": semantic_flag_columns(t, p, sensed, inputs),
    }
    ids = t["image_id"].to_pylist()
    stored = {r["image_id"]: r for r in flags}
    same = all(
        stored[i]["is_text_heavy"] == v and stored[i]["modality"] == m
        for i, v, m in zip(
            ids,
            variants["PASS 1 + detectors"]["is_text_heavy"].to_pylist(),
            variants["PASS 1 + detectors"]["modality"].to_pylist(),
            strict=True,
        )
    )
    kinds = np.array([label[i].kind if i in label else "?" for i in ids])
    counts = Counter(kinds.tolist())
    print(f"labelled images: {dict(counts)}; flags table agrees with PASS 1 + detectors: {same}")
    doc = np.isin(kinds, ("photo", "scan", "graphic"))
    text_truth = np.array([label[i].text_heavy if i in label else False for i in ids])
    print("\ntext-heavy (truth: scans; photos and graphics: not), photo/scan/graphic images:")
    for name, out in variants.items():
        pred = np.array(out["is_text_heavy"].to_pylist(), bool)
        print(f"  {name:22s} {pr(pred[doc], text_truth[doc])}")
    print("\nmodality (photo / scan / graphic), accuracy and confusion (rows: truth):")
    for name, out in variants.items():
        pred = np.array(out["modality"].to_pylist(), dtype=object)
        acc = float((pred[doc] == kinds[doc]).mean())
        print(f"  {name:22s} accuracy {acc:.2f} on {int(doc.sum())}")
        for truth in ("photo", "scan", "graphic"):
            row = Counter(pred[kinds == truth].tolist())
            print(
                f"    {truth:8s} -> "
                + ", ".join(f"{k} {row.get(k, 0)}" for k in ("photo", "scan", "graphic"))
            )
    human_rows = np.isin(kinds, ("photo", "face", "nonface"))
    human_truth = np.array([label[i].human if i in label else False for i in ids])
    out = variants["PASS 1 + detectors"]
    pred = np.array([bool(v) for v in out["is_human_present"].to_pylist()])
    print("\nhuman present from faces only (no zero-shot), photos + lfw face / non-face crops:")
    print(f"  all                    {pr(pred[human_rows], human_truth[human_rows])}")
    lfw = np.isin(kinds, ("face", "nonface"))
    print(f"  lfw crops only         {pr(pred[lfw], human_truth[lfw])}")
    photo = kinds == "photo"
    print(f"  photos only            {pr(pred[photo], human_truth[photo])}")
    print(
        "\nzero-shot CLIP (modality / human / density / text groups): not measurable offline "
        "(no real CLIP weights); dense scene: no labels."
    )


if __name__ == "__main__":
    main()
