"""``exokiratory demo``: build the sample collection into a workspace and run every pass on it."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from exokiratory.api.workspace import Workspace
from exokiratory.core.config import ConfigError
from exokiratory.core.layout import CONFIG_FILE, DATA_IMAGES
from exokiratory.passes.captions.summary import summary_lines as caption_lines

log = logging.getLogger(__name__)

DEMO_MARKER = ".exokiratory-demo"


TINY_NOTE = (
    "embeddings, segments, zero-shot scores, captions, depth maps and detections in this demo "
    "come from the 'tiny' profile: RANDOM-WEIGHT models of the real CLIP / DINOv2 / SAM / "
    "BLIP-2 / LLaVA / Depth Anything / OWLv2 / Stable Diffusion + ControlNet architectures "
    "(no download; the genprobe generations are random-weight plumbing; OCR uses its real "
    "shipped models). They exercise the plumbing and mean nothing (no semantic "
    "flags are drawn from them, the captions are gibberish); set "
    "passes.<pass>.model to 'lite' or 'full' for real ones."
)

#: Model passes of the demo: random-weight models, and a small SAM grid so that the demo takes
#: about a minute on a laptop CPU (a real run uses SAM's defaults: 32 x 32 points, 2 scales).
DEMO_MODEL_PASSES: dict[str, dict[str, object]] = {
    "embed-clip": {"model": "tiny"},
    "embed-dino": {"model": "tiny"},
    "segment": {
        "model": "tiny",
        "points_per_side": 4,
        "crop_n_layers": 0,
        "mask_max_side": 256,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "max_masks_per_image": 8,
        # no box NMS: random-weight SAM's masks overlap, and NMS would keep one per image;
        # PASS 7's motif co-occurrence needs several segments per image
        "box_nms_thresh": 1.0,
    },
    "segment-embed-clip": {"model": "tiny"},
    "segment-embed-dino": {"model": "tiny"},
    # PASS 5: a small caption budget; tiny BLIP-2 and LLaVA write random-weight gibberish
    "caption-select": {"max_units": 24},
    "caption-factual": {"model": "tiny", "max_new_tokens": 16, "segment_max_new_tokens": 8},
    "caption-dense": {"model": "tiny", "max_new_tokens": 24},
    "caption-embed": {"model": "tiny"},
    # PASS 6: OCR with its real shipped models (pages read at 1000 px); tiny Depth Anything
    # and OWLv2 (random-weight depth maps and boxes)
    "ocr": {"max_side": 1000},
    "depth": {"model": "tiny"},
    "detect": {"model": "tiny"},
    # PASS 7 (derivations): smaller minimum group sizes for the demo's few captioned images
    "motif-bags": {"min_group_images": 5},
    "structure-agreement": {"min_units": 5, "min_captions": 2},
    # PASS 8: generative probing with tiny random-weight SD / ControlNet pipelines (32 px, 2
    # steps; exemplars without a depth map get error rows saying so)
    "genprobe": {
        "model": "tiny",
        "controlnet_depth": "tiny",
        "controlnet_canny": "tiny",
        "max_exemplars": 4,
        "strengths": [0.5, 0.9],
        "seeds": [0],
        "size": 32,
        "steps": 2,
    },
}


def _use_tiny_models(ws: Workspace) -> None:
    """The demo runs offline: model passes use the random-weight tiny profile (said so)."""
    from exokiratory.core.config import render_config

    changed = False
    for name, settings in DEMO_MODEL_PASSES.items():
        mine = ws.config.passes.get(name)
        if mine is None or ("model" in settings and "model" not in mine):
            ws.config.passes[name] = {**settings, **(mine or {})}
            changed = True
    if changed:
        ws.storage.write_bytes_atomic(CONFIG_FILE, render_config(ws.config).encode("utf-8"))
        ws.reload_config()


def run_demo(root: str | Path, *, workers: int | None = None, progress: bool | None = None) -> str:
    """Create (or resume) a demo workspace at ``root`` and return a text summary.

    The collection is written into ``<root>/data/images`` once; rerunning the demo resumes the
    workspace (a rescan reads nothing and every pass finds its work done).
    """
    root = Path(root)
    images = root / DATA_IMAGES
    if (root / CONFIG_FILE).exists() and not (images / DEMO_MARKER).exists():
        raise ConfigError(
            f"{root} is a workspace that the demo did not create; choose another folder"
        )
    if not (images / DEMO_MARKER).exists():
        from exokiratory.demo.data import build_demo_collection

        items = build_demo_collection(images)
        kinds = Counter(i.kind for i in items)
        log.info("demo collection: %d files (%s) in %s", len(items), dict(kinds), images)
        (images / DEMO_MARKER).write_text("written by exokiratory demo\n")
    ws = Workspace.init(root, [str(images)], exist_ok=True)
    _use_tiny_models(ws)
    scan = ws.scan(progress=progress)
    reports = ws.run("all", workers=workers, progress=progress)
    report = ws.report(progress=progress)
    st = ws.status()
    lines = [
        f"demo workspace: {ws.storage.url}",
        scan.summary(),
        *(r.summary() for r in reports),
        "images: " + ", ".join(f"{n} {s}" for s, n in st.images_by_status.items()),
        f"exact-duplicate paths: {st.exact_duplicate_paths}",
        *(
            f"{d.name}: " + ", ".join(f"{k.removeprefix('is_')} {v}" for k, v in d.summary.items())
            for d in st.derived
            if d.summary
        ),
        *caption_lines(st.captions),
        report.summary(),
        f"open: {report.local_path or report.url}",
        f'try: exokiratory sql -w {root} "SELECT status, error, count(*) AS n FROM images '
        'GROUP BY ALL ORDER BY n DESC"',
        f'     exokiratory sql -w {root} "SELECT i.first_path, f.dup_group_id FROM flags f '
        'JOIN images i USING (image_id) WHERE f.dup_group_id IS NOT NULL ORDER BY 2"',
        f"     exokiratory status -w {root}",
    ]
    if any(n in ws.config.passes for n in DEMO_MODEL_PASSES):
        lines.insert(len(lines) - 3, "note: " + TINY_NOTE)
    return "\n".join(lines)
