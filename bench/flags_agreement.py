"""Routing-flag agreement benchmark: exokiratory ``flags`` vs cleanvision ``Imagelab``.

Builds a small deterministic collection in a temp dir from the real photos shipped with
scikit-image and scikit-learn, plus controlled variants built to have each issue type:

* dark: exposure x0.25 / x0.12 / x0.2, gamma 3 (shadows crushed, highlights kept);
  x0.5 is *ambiguous* (excluded from precision / recall).
* light: gain 3 + offset, gain 5, 90% blend to white; x1.3 is ambiguous.
* blurry: Gaussian blur of 0.6% / 1.25% / 2.5% of the long side (0.25% ambiguous), and the
  motion-blurred ``clock_motion.png`` original.
* low information: flat colours (orange, grey, black, white), flat orange + faint noise.
* grayscale: every mode-L original, grey saved as mode L (PNG, JPEG) and as RGB (PNG, JPEG).
* odd aspect ratio: strips of ratio 0.21-0.27 (a 0.47 crop is a negative control).
* odd size: 4000x3000 upscale, 24x24 and 40x27 thumbnails (``microaneurysms.png``, 102 px, is
  ambiguous).
* exact duplicates: byte-identical copies (all members of a set are issues, as in cleanvision).
* near duplicates: every file that has a whole-image transform of the same picture (resize,
  recompression, exposure, blur, grey) elsewhere in the collection, with different bytes; all
  members of a group count (as in cleanvision); flat images are ambiguous. A pixel-identical
  re-encode (different bytes) is a near duplicate, not an exact one.

Ground truth is what each file was *built* to have; side effects (a darkened photo that also
loses edges) count against a tool. exokiratory's near-duplicate verdict is group membership
(``dup_group_size > 1``), exact duplicates ``n_paths > 1``.

Run: ``/work/venv/bin/python bench/flags_agreement.py`` (< 4 min on 2 cores).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from exokiratory.passes.sense.hashes import hamming

os.environ["EXOKIRATORY_PROGRESS"] = "0"
os.environ["TQDM_DISABLE"] = "1"  # cleanvision's progress bars ignore verbose=False

SITE = Path(np.__file__).resolve().parents[1]
SKI = SITE / "skimage" / "data"
SKL = SITE / "sklearn" / "datasets" / "images"
WORKERS = 2
REPEATS = 3

ISSUES = (
    "dark",
    "light",
    "blurry",
    "low_information",
    "grayscale",
    "odd_aspect_ratio",
    "odd_size",
    "exact_duplicates",
    "near_duplicates",
)
# issue -> (our verdict column, our score column); near / exact verdicts are derived below
OURS = {
    "dark": ("is_dark", "dark_score"),
    "light": ("is_light", "light_score"),
    "blurry": ("is_blurry", "blurry_score"),
    "low_information": ("is_low_information", "low_information_score"),
    "grayscale": ("is_grayscale", "grayscale_score"),
    "odd_aspect_ratio": ("is_odd_aspect_ratio", "aspect_ratio_score"),
    "odd_size": ("is_odd_size", "size_score"),
    "exact_duplicates": ("is_exact_dup", "n_paths"),
    "near_duplicates": ("is_near_dup_member", "hash_distance_to_canonical"),
}

# real photos: name -> natural ground truth (None = ambiguous)
ORIGINALS: dict[str, dict[str, bool | None]] = {
    "astronaut.png": {},
    "coffee.png": {},
    "chelsea.png": {},
    "rocket.jpg": {},
    "motorcycle_left.png": {},
    "motorcycle_right.png": {},  # stereo partner of motorcycle_left: a different view
    "retina.jpg": {},
    "ihc.png": {},
    "hubble_deep_field.jpg": {"dark": None},
    "camera.png": {"grayscale": True},
    "coins.png": {"grayscale": True},
    "moon.png": {"grayscale": True},
    "page.png": {"grayscale": True},
    "text.png": {"grayscale": True},
    "brick.png": {"grayscale": True},
    "grass.png": {"grayscale": True},
    "gravel.png": {"grayscale": True},
    "cell.png": {"grayscale": True},
    "clock_motion.png": {"grayscale": True, "blurry": True},
    "microaneurysms.png": {"grayscale": True, "odd_size": None},
}


class Collection:
    def __init__(self, root: Path):
        self.root = root
        self.gt: dict[str, dict[str, bool | None]] = {}
        self.scene: dict[str, str] = {}
        self.desc: dict[str, str] = {}

    def _record(self, name: str, scene: str, desc: str, gt: dict[str, bool | None]) -> None:
        self.gt[name] = {k: False for k in ISSUES} | gt
        self.scene[name] = scene
        self.desc[name] = desc

    def copy(self, src: Path, name: str, scene: str, desc: str, **gt: bool | None) -> None:
        shutil.copyfile(src, self.root / name)
        self._record(name, scene, desc, gt)

    def save(
        self,
        im: Image.Image,
        name: str,
        scene: str,
        desc: str,
        quality: int = 90,
        **gt: bool | None,
    ) -> None:
        buf = io.BytesIO()
        if name.endswith(".png"):
            im.save(buf, "PNG", compress_level=3)
        else:
            im.save(buf, "JPEG", quality=quality)
        (self.root / name).write_bytes(buf.getvalue())
        self._record(name, scene, desc, gt)

    def finish(self) -> None:
        """Exact and near-duplicate ground truth from byte hashes and scenes."""
        sha = {n: hashlib.sha1((self.root / n).read_bytes()).hexdigest() for n in self.gt}
        by_sha: dict[str, list[str]] = {}
        for n, h in sha.items():
            by_sha.setdefault(h, []).append(n)
        by_scene: dict[str, set[str]] = {}
        for n, s in self.scene.items():
            if s is not None and self.gt[n]["near_duplicates"] is not None:
                by_scene.setdefault(s, set()).add(sha[n])
        for n, g in self.gt.items():
            g["exact_duplicates"] = len(by_sha[sha[n]]) > 1
            if g["near_duplicates"] is not None:
                g["near_duplicates"] = len(by_scene.get(self.scene[n], ())) > 1


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float64)


def _img(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def build(root: Path) -> Collection:
    c = Collection(root)
    rng = np.random.default_rng(0)
    for name, gt in ORIGINALS.items():
        c.copy(SKI / name, name, Path(name).stem, "original", **gt)
    for name in ("china.jpg", "flower.jpg"):
        c.copy(SKL / name, name, Path(name).stem, "original")
    load = {n: Image.open(root / n).convert("RGB") for n in ("astronaut.png", "coffee.png")}
    for n in ("chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg", "ihc.png"):
        load[n] = Image.open(root / n).convert("RGB")
    for n in ("china.jpg", "flower.jpg"):
        load[n] = Image.open(root / n).convert("RGB")
    ast, cof, che = _arr(load["astronaut.png"]), _arr(load["coffee.png"]), load["chelsea.png"]

    # dark
    c.save(_img(ast * 0.5), "dark_astronaut_x050.png", "astronaut", "exposure x0.5", dark=None)
    c.save(_img(ast * 0.25), "dark_astronaut_x025.jpg", "astronaut", "exposure x0.25", dark=True)
    c.save(_img(ast * 0.12), "dark_astronaut_x012.png", "astronaut", "exposure x0.12", dark=True)
    c.save(_img(cof * 0.2), "dark_coffee_x020.jpg", "coffee", "exposure x0.2", dark=True)
    c.save(_img(255 * (cof / 255) ** 3), "dark_coffee_gamma3.jpg", "coffee", "gamma 3", dark=True)
    # light
    ch = _arr(che)
    c.save(_img(ch * 1.3), "light_chelsea_x130.jpg", "chelsea", "exposure x1.3", light=None)
    c.save(_img(ch * 3 + 80), "light_chelsea_gain3.png", "chelsea", "gain 3 + 80", light=True)
    c.save(_img(ch * 5), "light_chelsea_gain5.jpg", "chelsea", "gain 5", light=True)
    c.save(_img(ch * 0.1 + 229.5), "light_chelsea_wash90.png", "chelsea", "90% white", light=True)
    # blurry (radius as a fraction of the long side)
    china = load["china.jpg"]
    for frac, gt in ((0.0025, None), (0.006, True), (0.0125, True), (0.025, True)):
        r = frac * max(china.size)
        c.save(
            china.filter(ImageFilter.GaussianBlur(r)),
            f"blur_china_{frac * 1000:04.1f}pm.jpg",
            "china",
            f"Gaussian r={r:.1f}px",
            blurry=gt,
        )
    flower = load["flower.jpg"]
    r = 0.0125 * max(flower.size)
    c.save(
        flower.filter(ImageFilter.GaussianBlur(r)),
        "blur_flower_12.5pm.png",
        "flower",
        f"Gaussian r={r:.1f}px",
        blurry=True,
    )
    # low information / near-blank
    w, h = 480, 360
    flat = {
        "orange": ((210, 120, 40), {}),
        "grey": ((128, 128, 128), {"grayscale": True}),
        "black": ((0, 0, 0), {"grayscale": True, "dark": True}),
        "white": ((255, 255, 255), {"grayscale": True, "light": True}),
    }
    for label, (rgb, extra) in flat.items():
        a = np.broadcast_to(np.array(rgb, dtype=np.float64), (h, w, 3))
        ext = "jpg" if label == "black" else "png"
        c.save(
            _img(a),
            f"flat_{label}.{ext}",
            f"flat_{label}",
            f"flat {rgb}",
            low_information=True,
            blurry=None,
            near_duplicates=None,
            **extra,
        )
    for sigma in (1.0, 2.0):
        a = np.array((210, 120, 40), dtype=np.float64) + rng.normal(0, sigma, (h, w, 3))
        c.save(
            _img(a),
            f"flat_orange_noise{sigma:.0f}.png",
            f"flat_noise{sigma}",
            f"flat orange + noise sigma={sigma}",
            low_information=True,
            blurry=None,
            near_duplicates=None,
        )
    # grayscale
    moto = load["motorcycle_left.png"]
    grey = moto.convert("L")
    for name, im in (
        ("grey_moto_L.png", grey),
        ("grey_moto_L.jpg", grey),
        ("grey_moto_rgb.png", grey.convert("RGB")),
        ("grey_moto_rgb.jpg", grey.convert("RGB")),
        ("grey_coffee_rgb.jpg", load["coffee.png"].convert("L").convert("RGB")),
    ):
        scene = "coffee" if "coffee" in name else "motorcycle_left"
        c.save(im, name, scene, f"grey, mode {im.mode}", grayscale=True)
    # odd aspect ratio (crops: new content, own scenes)
    ihc, ret, roc = load["ihc.png"], load["retina.jpg"], load["rocket.jpg"]
    c.save(
        ihc.crop((0, 200, 512, 310)),
        "aspect_ihc_strip.png",
        "ihc_strip",
        "512x110",
        odd_aspect_ratio=True,
    )
    c.save(
        che.crop((180, 0, 260, 300)),
        "aspect_chelsea_col.jpg",
        "che_col",
        "80x300",
        odd_aspect_ratio=True,
    )
    c.save(
        ret.crop((0, 560, 1411, 860)),
        "aspect_retina_strip.jpg",
        "ret_strip",
        "1411x300",
        odd_aspect_ratio=True,
    )
    c.save(roc.crop((100, 100, 527, 300)), "aspect_rocket_crop.jpg", "roc_crop", "427x200 (0.47)")
    # odd size
    c.save(
        flower.resize((4000, 3000), Image.BICUBIC),
        "size_flower_4000x3000.jpg",
        "flower",
        "upscaled",
        odd_size=True,
    )
    c.save(
        ihc.resize((24, 24), Image.LANCZOS), "size_ihc_24x24.png", "ihc", "thumbnail", odd_size=True
    )
    c.save(
        china.resize((40, 27), Image.LANCZOS),
        "size_china_40x27.jpg",
        "china",
        "thumbnail",
        odd_size=True,
    )
    # exact duplicates
    c.copy(root / "astronaut.png", "dup_astronaut_copy.png", "astronaut", "byte copy")
    c.copy(root / "coffee.png", "dup_coffee_copy1.png", "coffee", "byte copy")
    c.copy(root / "coffee.png", "dup_coffee_copy2.png", "coffee", "byte copy")
    c.copy(root / "rocket.jpg", "dup_rocket_copy.jpg", "rocket", "byte copy")
    # near duplicates
    half = roc.resize((roc.width // 2, roc.height // 2), Image.LANCZOS)
    c.save(half, "near_rocket_half.jpg", "rocket", "0.5x, q85", quality=85)
    c.save(roc, "near_rocket_q30.jpg", "rocket", "recompressed q30", quality=30)
    tq = che.resize((che.width * 3 // 4, che.height * 3 // 4), Image.LANCZOS)
    c.save(tq, "near_chelsea_075.jpg", "chelsea", "0.75x, q60", quality=60)
    brick = Image.open(root / "brick.png")
    c.save(brick, "near_brick_q50.jpg", "brick", "recompressed q50", quality=50, grayscale=True)
    cam = Image.open(root / "camera.png")
    buf = io.BytesIO()
    cam.save(buf, "PNG", compress_level=9)
    (root / "near_camera_resave.png").write_bytes(buf.getvalue())
    c._record("near_camera_resave.png", "camera", "same pixels, other bytes", {"grayscale": True})
    c.finish()
    return c


def run_ours(images: Path, ws_dir: Path):
    from exokiratory import Workspace

    t0 = time.perf_counter()
    ws = Workspace.init(ws_dir, [str(images)])
    ws.scan()
    ws.run(["sense", "flags"], workers=WORKERS)
    elapsed = time.perf_counter() - t0
    flags = ws.sql("SELECT f.*, i.first_path FROM flags f JOIN images i USING (image_id)")
    paths = ws.sql("SELECT path, image_id FROM paths WHERE status = 'image'").to_pandas()
    df = paths.merge(flags.to_pandas(), on="image_id", how="left")
    df["name"] = [os.path.relpath(_local(p), images) for p in df["path"]]
    df["is_exact_dup"] = df["n_paths"] > 1
    df["is_near_dup_member"] = df["dup_group_size"].fillna(0) > 1
    feats = ws.sql(
        "SELECT image_id, phash, dhash, phash_center, noise_score, text_likeness_score FROM features"
    ).to_pandas()
    df = df.reset_index(drop=True).merge(feats, on="image_id", how="left")
    return df.set_index("name"), elapsed


def _local(p: str) -> str:
    return p[len("file://") :] if p.startswith("file://") else p


def run_cleanvision(images: Path):
    from cleanvision import Imagelab

    t0 = time.perf_counter()
    lab = Imagelab(data_path=str(images), verbose=False)
    lab.find_issues(n_jobs=WORKERS, verbose=False)
    elapsed = time.perf_counter() - t0
    df = lab.issues.copy()
    df.index = [os.path.relpath(_local(str(p)), images) for p in df.index]
    return df, elapsed


def kappa(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    po = np.mean(a == b)
    pe = (a.sum() * b.sum() + (n - a.sum()) * (n - b.sum())) / n**2
    return float("nan") if pe >= 1 else float((po - pe) / (1 - pe))


def pr(pred: np.ndarray, gt: list[bool | None]) -> str:
    keep = np.array([g is not None for g in gt])
    truth = np.array([bool(g) for g in gt])[keep]
    p = pred[keep]
    tp, fp, fn = int((p & truth).sum()), int((p & ~truth).sum()), int((~p & truth).sum())
    prec = f"{tp / (tp + fp):.2f} ({tp}/{tp + fp})" if tp + fp else "  -  (0/0)"
    rec = f"{tp / (tp + fn):.2f} ({tp}/{tp + fn})" if tp + fn else "  -  (0/0)"
    return f"P {prec:<13} R {rec}"


def _fmt(x: object) -> str:
    if isinstance(x, float | np.floating):
        return "nan" if not np.isfinite(x) else f"{x:.3f}"
    return str(x)


def near_dup_misses(col: Collection, ours, names: list[str]) -> None:
    """Why exokiratory left a ground-truth near duplicate alone: its nearest scene-mate."""
    print("\nNear duplicates (ground truth) exokiratory did not group, nearest scene-mate:")
    print("  strict = flat / text-heavy images, grouped only among themselves (phash<=4, dhash<=8)")
    for n in names:
        if not col.gt[n]["near_duplicates"] or ours.loc[n, "is_near_dup_member"]:
            continue
        r = ours.loc[n]
        best = None
        for m in names:
            if m == n or col.scene[m] != col.scene[n] or ours.loc[m, "image_id"] == r["image_id"]:
                continue
            d = tuple(
                int(hamming(np.uint64(r[h]), np.uint64(ours.loc[m, h])))
                for h in ("phash", "dhash", "phash_center")
            )
            if best is None or d < best[0]:
                best = (d, m)
        if best is None:
            continue

        def strict(x: str) -> bool:
            return bool(
                ours.loc[x, "noise_score"] < 0.6 or ours.loc[x, "text_likeness_score"] >= 0.6
            )

        (dp, dd, dc), m = best
        print(
            f"  {n:<28} ~ {m:<24} phash {dp:>2} dhash {dd:>2} phash_center {dc:>2}"
            f"  strict {strict(n)!s:<5}/{strict(m)!s:<5}  noise {ours.loc[n, 'noise_score']:.2f}"
        )


def report(col: Collection, ours, theirs) -> None:
    names = sorted(col.gt)
    missing = [n for n in names if n not in ours.index or n not in theirs.index]
    if missing:
        print(f"!! files missing from a tool's output: {missing}")
        names = [n for n in names if n not in missing]
    print(f"\n{len(names)} files compared\n")
    head = (
        f"{'issue':<17}{'ours':>5}{'cv':>5}{'gt':>5}  {'both':>4} {'none':>4} {'ours':>4} {'cv':>4}"
    )
    print(head + f"  {'kappa':>6}   ours vs gt                    cleanvision vs gt")
    details = []
    wrong = []
    for issue in ISSUES:
        ocol, scol = OURS[issue]
        o = ours.loc[names, ocol].fillna(False).astype(bool).to_numpy()
        t = theirs.loc[names, f"is_{issue}_issue"].astype(bool).to_numpy()
        gt = [col.gt[n][issue] for n in names]
        n_gt = sum(bool(g) for g in gt)
        k = kappa(o, t)
        print(
            f"{issue:<17}{o.sum():>5}{t.sum():>5}{n_gt:>5}  {(o & t).sum():>4} {(~o & ~t).sum():>4}"
            f" {(o & ~t).sum():>4} {(~o & t).sum():>4}  {k:>6.2f}   {pr(o, gt):<30}{pr(t, gt)}"
        )
        for i, n in enumerate(names):
            if o[i] == t[i] and gt[i] is not None and o[i] != gt[i]:
                wrong.append((issue, n, col.desc[n], _fmt(ours.loc[n, scol]), o[i], gt[i]))
            if o[i] != t[i]:
                their_score = theirs.loc[n].get(f"{issue}_score", float("nan"))
                details.append(
                    (
                        issue,
                        n,
                        col.desc[n],
                        _fmt(ours.loc[n, scol]),
                        o[i],
                        _fmt(their_score),
                        t[i],
                        gt[i],
                    )
                )
    print("\n(cols: flagged by ours / cleanvision / ground truth; agreement both-yes / both-no /")
    print(" only ours / only cleanvision; P/R exclude files whose ground truth is ambiguous)")
    print("\nDisagreements:")
    print(
        f"  {'issue':<17}{'file':<28}{'built as':<26}{'our score':>10} {'ours':>5}"
        f" {'cv score':>9} {'cv':>5}  gt"
    )
    for issue, n, desc, osc, ov, tsc, tv, g in details:
        gts = "?" if g is None else str(g)
        print(f"  {issue:<17}{n:<28}{desc:<26}{osc:>10} {ov!s:>5} {tsc:>9} {tv!s:>5}  {gts}")
    print("\nBoth tools agree but contradict the ground truth:")
    for issue, n, desc, osc, ov, g in wrong:
        print(f"  {issue:<17}{n:<28}{desc:<26}{osc:>10}  both {ov!s:<5} gt {g}")
    near_dup_misses(col, ours, names)


def main() -> None:
    warnings.filterwarnings("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="flags_agreement_"))
    try:
        images = tmp / "images"
        images.mkdir()
        t0 = time.perf_counter()
        col = build(images)
        n_bytes = sum(p.stat().st_size for p in images.iterdir())
        print(
            f"collection: {len(col.gt)} files, {n_bytes / 1e6:.1f} MB, built in"
            f" {time.perf_counter() - t0:.1f}s ({images})"
        )
        t_ours, t_cv = [], []
        for rep in range(REPEATS):  # interleaved, median: the machine is shared and noisy
            ours, t = run_ours(images, tmp / f"ws{rep}")
            t_ours.append(t)
            theirs, t = run_cleanvision(images)
            t_cv.append(t)
        n = len(col.gt)
        to, tc = float(np.median(t_ours)), float(np.median(t_cv))
        runs_o = ", ".join(f"{t:.2f}" for t in t_ours)
        runs_c = ", ".join(f"{t:.2f}" for t in t_cv)
        print(f"wall clock, median of {REPEATS} interleaved runs (each run in s):")
        print(
            f"  exokiratory scan+sense+flags (workers={WORKERS}): {to:6.2f}s  {n / to:6.1f} files/s  [{runs_o}]"
        )
        print(
            f"  cleanvision Imagelab+find_issues (n_jobs={WORKERS}): {tc:6.2f}s  {n / tc:6.1f} files/s  [{runs_c}]"
        )
        print(f"  throughput ratio ours / cleanvision: {tc / to:.2f}x")
        report(col, ours, theirs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
