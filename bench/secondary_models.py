"""PASS 6 model passes (``depth``, ``detect``): end to end vs the bare model, and FLOPs per image.

For each pass, a real-size random-weight checkpoint (Depth Anything V2 Small's dimensions; OWLv2
base patch16 at 960 px, whose text tower uses the tiny test tokenizer: random weights need no
real vocabulary) is saved to a folder and loaded through the same ``from_pretrained`` path as a
real one (no download). On the CPU, on the same photos (scikit-image's):

* bare: the model alone, one image per forward (as the pass does on the CPU), on inputs decoded
  and preprocessed beforehand (``preloaded``), after a warm-up over every input shape; timed
  before and after the pass (the machine is shared), the mean is the reference;
* the pass: ``exokiratory run <pass> --all`` with one worker, in this process, end to end
  (planning, reading and decoding the files, preprocessing, forward, statistics or box
  post-processing, Parquet, jobs log); the model is loaded before the clock, as for the bare
  run.

Both timed as wall and CPU time, with one torch thread by default (on a shared machine a second
OpenMP thread spins while it waits, so CPU time would count waiting). FLOPs: ``torch.utils.flop_counter`` on one forward at the
model's input size (a 4:3 photo for depth: 518 x 686; 960 x 960 for detection).

    python bench/secondary_models.py [--images 6] [--only depth|detect]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from exokiratory import Workspace
from exokiratory.core.config import RunConfig
from exokiratory.core.decode import load_working_image
from exokiratory.engine.run import RunReport
from exokiratory.models import depth as mdepth
from exokiratory.models import detect as mdetect
from exokiratory.models.registry import resolve
from tests.conftest import NATURAL_PHOTOS, skimage_data_dir


class Clock:
    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def save_depth(folder: Path) -> Path:
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(mdepth.small_config()).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(mdepth._processor(518)))
    return folder


def save_detect(folder: Path) -> Path:
    from transformers import Owlv2ForObjectDetection

    from exokiratory.models.tiny import _build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(folder)
    tokenizer.model_max_length = mdetect.QUERY_TOKENS
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    Owlv2ForObjectDetection(mdetect.base_config()).eval().save_pretrained(folder)
    proc = {
        "size": {"height": 960, "width": 960},
        "image_mean": list(mdetect.CLIP_MEAN),
        "image_std": list(mdetect.CLIP_STD),
        "rescale_factor": 1 / 255,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return folder


def flops(model: torch.nn.Module, **inputs: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(**inputs)
    return float(counter.get_total_flops())


def run_pass(root: Path, src: Path, name: str, folder: Path) -> tuple[Clock, Clock, int]:
    """The pass end to end, then again with nothing left to do (its fixed cost per run:
    catalog, planning, releasing the models)."""
    ws = Workspace.init(root, [str(src)], run=RunConfig(workers=1))
    ws.config.passes[name] = {"model": str(folder), "device": "cpu"}
    ws.scan(progress=False)
    with Clock() as clock:
        (rep,) = ws.run([name], progress=False, workers=1, all_images=True)
    if not isinstance(rep, RunReport) or rep.unit_errors or not rep.processed:
        raise RuntimeError(rep.summary())
    with Clock() as idle:
        ws.run([name], progress=False, workers=1, all_images=True)
    return clock, idle, rep.processed


def bench_depth(src: Path, tmp: Path, paths: list[Path]) -> None:
    folder = save_depth(tmp / "depth-small")
    est = mdepth.load_depth_estimator(resolve("depth", str(folder)), tmp / "cache", "cpu")
    inputs = [est.pixels(load_working_image(p.read_bytes(), 1280).rgb) for p in paths]
    est.predict(inputs)  # warm-up: every input shape once

    def bare() -> Clock:
        with Clock() as c:
            for x in inputs:
                est.predict([x])
        return c

    b1 = bare()
    clock, idle, n = run_pass(tmp / "ws-depth", src, "depth", folder)
    b2 = bare()
    x = torch.from_numpy(est.pixels(np.zeros((750, 1000, 3), np.uint8))[None])
    f = flops(est.model, pixel_values=x)
    report(
        "depth (Depth Anything V2 Small dims, random)",
        b1,
        b2,
        clock,
        idle,
        n,
        f,
        tuple(x.shape[2:]),
    )


def bench_detect(src: Path, tmp: Path, paths: list[Path]) -> None:
    from exokiratory.passes.detect.step import load_prompt_set, queries_of

    folder = save_detect(tmp / "owlv2-base")
    det = mdetect.load_detector(resolve("detect", str(folder)), tmp / "cache", "cpu")
    tokens = det.tokens(queries_of(load_prompt_set(None, "detection")).texts)
    inputs = np.stack([det.pixels(load_working_image(p.read_bytes(), 1280).rgb) for p in paths])
    det.detect(inputs[:1], tokens)  # warm-up (one input shape)

    def bare() -> Clock:
        with Clock() as c:
            det.detect(inputs, tokens)
        return c

    b1 = bare()
    clock, idle, n = run_pass(tmp / "ws-detect", src, "detect", folder)
    b2 = bare()
    x = torch.from_numpy(inputs[:1])
    f = flops(det.model, pixel_values=x, **tokens)
    report("detect (OWLv2 base/16 dims, random, 10 queries)", b1, b2, clock, idle, n, f, (960, 960))


def report(
    what: str,
    b1: Clock,
    b2: Clock,
    run: Clock,
    idle: Clock,
    n: int,
    f: float,
    hw: tuple[int, ...],
) -> None:
    wall, cpu = (b1.wall + b2.wall) / 2, (b1.cpu + b2.cpu) / 2
    print(f"{what}: {n} images")
    print(
        f"  bare model, preloaded inputs (before / after the pass): wall {b1.wall:.1f} / "
        f"{b2.wall:.1f} s, CPU {b1.cpu:.1f} / {b2.cpu:.1f} s ({cpu / n:.2f} CPU s/image)"
    )
    print(
        f"  the pass end to end: wall {run.wall:.1f} s = {run.wall / wall:.3f}x, "
        f"CPU {run.cpu:.1f} s = {run.cpu / cpu:.3f}x"
    )
    per = (run.cpu - idle.cpu) / n
    print(
        f"  fixed cost of a run (nothing to do): CPU {idle.cpu:.2f} s; per image: pass "
        f"{per:.3f} s vs bare {cpu / n:.3f} s = {per / (cpu / n):.3f}x"
    )
    print(f"  FLOPs per image at {hw[0]}x{hw[1]}: {f / 1e9:.1f} GFLOP")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--only", choices=("depth", "detect"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is work)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        src = tmp / "photos"
        src.mkdir()
        names = [n for n in NATURAL_PHOTOS if n.endswith((".png", ".jpg"))][: args.images]
        for name in names:
            shutil.copy(skimage_data_dir() / name, src / name)
        paths = sorted(src.iterdir())
        print(f"{len(paths)} photos, torch threads {torch.get_num_threads()}")
        if args.only in (None, "depth"):
            bench_depth(src, tmp, paths)
        if args.only in (None, "detect"):
            bench_detect(src, tmp, paths)


if __name__ == "__main__":
    main()
