"""Human-present cue: precision / recall of the face detectors of the ``cues`` pass, before
(OpenCV's Haar ``frontalface_alt2`` cascade, the default until issue 17) and after (dlib's HOG
frontal-face detector, the default now) on a labelled folder of real images.

Without zero-shot probabilities, ``is_human_present`` is "the cues found a face"
(:mod:`exokiratory.passes.flags.semantic`: 0.9 x [n_faces > 0] >= 0.5), so the image-level
precision / recall of ``n_faces > 0`` is the flag's. Every image goes through the same decode
as the pass (``load_working_image`` at 960 px, then the detector's own resize).

Labelled folder (labels by hand, looking at every image):

* people: scikit-image ``astronaut`` and ``camera``; from Debian's ``opencv-doc`` (examples
  and tutorial images) ``messi5``, ``messiup``, ``basketball1/2``, ``left01``, ``left06``,
  ``right03`` (a man behind a calibration chessboard), ``facereg`` (four faces),
  ``face_swapped``, ``julia_facedetect_sample`` (the Mona Lisa), ``person_multi_det`` and
  ``faceDetection`` (pedestrians, a portrait), two frames of ``vtest.avi`` (small pedestrians);
* people-free photos: 20 scikit-image samples (coffee, chelsea, rocket, coins...) and 26
  ``opencv-doc`` images (baboon, fruits, building, squirrel, starry night, a cartoon robot...);
* people-free wallpapers: one image per wallpaper of ``plasma-workspace-wallpapers``, every
  raster ``gnome-backgrounds`` background and ``desktop-base``'s login / boot screens, except
  ``Autumn`` and ``SafeLanding`` (painted figures of people);
* faces: scikit-image's ``lfw_subset`` (100 face crops, 100 non-face crops, 25 px upscaled to
  150 px).

    apt-get install -y gnome-backgrounds plasma-workspace-wallpapers desktop-base opencv-doc
    python bench/human_cue.py
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from exokiratory.core.decode import load_working_image
from exokiratory.passes.cues.faces import FaceDetector, FaceSettings

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_HTML = Path("/usr/share/doc/opencv-doc/opencv4/html")
PEOPLE_OPENCV = [
    *(OPENCV_DATA / n for n in ("messi5.jpg", "basketball1.png", "basketball2.png")),
    *(OPENCV_DATA / n for n in ("left01.jpg", "left06.jpg", "right03.jpg")),
    *(OPENCV_HTML / n for n in ("facereg.jpg", "face_swapped.jpg", "messiup.jpg")),
    *(OPENCV_HTML / n for n in ("julia_facedetect_sample.jpg", "person_multi_det.jpg")),
    OPENCV_HTML / "faceDetection.png",
]
NO_PEOPLE_OPENCV = [
    OPENCV_DATA / n
    for n in (
        *("aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "box.png"),
        *("box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png", "fruits.jpg"),
        *("graf1.png", "leuvenA.jpg", "orange.jpg", "rubberwhale1.png", "smarties.png"),
        *("squirrel_cls.jpg", "starry_night.jpg", "sudoku.png", "board.jpg", "stuff.jpg"),
        *("licenseplate_motion.jpg", "HappyFish.jpg", "Blender_Suzanne1.jpg", "home.jpg"),
        "ml.png",
    )
]
PEOPLE_SKIMAGE = ("astronaut.png", "camera.png")
NO_PEOPLE_SKIMAGE = (
    *("coffee.png", "chelsea.png", "rocket.jpg", "coins.png", "moon.png", "grass.png"),
    *("gravel.png", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "horse.png"),
    *("brick.png", "cell.png", "ihc.png", "logo.png", "page.png", "text.png", "color.png"),
    *("microaneurysms.png", "phantom.png"),
)
WALLPAPERS_WITH_PEOPLE = ("Autumn", "SafeLanding")
BEFORE = FaceSettings(model="haar-alt2")
AFTER = FaceSettings()


@dataclass
class Item:
    name: str
    group: str  # photo | wallpaper | lfw
    human: bool
    rgb: np.ndarray


def _decode(path: Path) -> np.ndarray:
    return load_working_image(path, working_size=960).rgb


def _wallpapers() -> list[Path]:
    out: list[Path] = []
    for folder in sorted(Path("/usr/share/wallpapers").glob("*/contents/images")):
        if folder.parent.parent.name in WALLPAPERS_WITH_PEOPLE:
            continue
        imgs = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp")]
        if not imgs:
            continue

        def area(p: Path) -> int:
            m = re.match(r"(\d+)x(\d+)", p.stem)
            return int(m.group(1)) * int(m.group(2)) if m else 0

        out.append(next((p for p in imgs if p.stem == "1920x1080"), max(imgs, key=area)))
    out += sorted(Path("/usr/share/backgrounds/gnome").glob("*.webp"))
    out += sorted(Path("/usr/share/desktop-base").glob("*-theme/login/*.jpg"))
    out += sorted(Path("/usr/share/desktop-base").glob("*-theme/grub/grub-16x9.png"))
    return out


def _video_frames() -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(OPENCV_DATA / "vtest.avi"))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for k in (n // 4, 3 * n // 4) if n else ():
        cap.set(cv2.CAP_PROP_POS_FRAMES, k)
        ok, frame = cap.read()
        if ok:
            frames.append(np.ascontiguousarray(frame[:, :, ::-1]))
    return frames


def _photos() -> list[Item]:
    import skimage

    sk = Path(skimage.__file__).parent / "data"
    items = [Item(n, "photo", True, _decode(sk / n)) for n in PEOPLE_SKIMAGE]
    items += [Item(n, "photo", False, _decode(sk / n)) for n in NO_PEOPLE_SKIMAGE]
    if not OPENCV_DATA.is_dir():
        print("opencv-doc is not installed: its photos are left out")
        return items
    items += [Item(p.name, "photo", True, _decode(p)) for p in PEOPLE_OPENCV]
    items += [Item(f"vtest-{i}", "photo", True, f) for i, f in enumerate(_video_frames())]
    return items + [Item(p.name, "photo", False, _decode(p)) for p in NO_PEOPLE_OPENCV]


def _lfw() -> list[Item]:
    import skimage.data

    out = []
    for i, arr in enumerate(skimage.data.lfw_subset()):
        img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).resize((150, 150))
        out.append(Item(f"lfw-{i:03d}", "lfw", i < 100, np.asarray(img.convert("RGB"))))
    return out


def collection() -> list[Item]:
    walls = _wallpapers()
    if not walls:
        print("no Debian wallpapers: apt-get install gnome-backgrounds plasma-workspace-wallpapers")
    items = _photos() + [
        Item(
            p.parent.parent.parent.name if "wallpapers" in p.parts else p.stem,
            "wallpaper",
            False,
            _decode(p),
        )
        for p in walls
    ]
    return items + _lfw()


def detect(items: list[Item], settings: FaceSettings) -> tuple[np.ndarray, float]:
    """``n_faces > 0`` per item, and the mean seconds per image."""
    det = FaceDetector(settings)
    found = np.zeros(len(items), bool)
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        found[i] = det.cues(it.rgb).n_faces > 0
    return found, (time.perf_counter() - t0) / max(len(items), 1)


def pr(pred: np.ndarray, truth: np.ndarray) -> str:
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, neg = int((~pred & truth).sum()), int((~truth).sum())
    p = f"{tp / (tp + fp):.2f}" if tp + fp else "-"
    r = f"{tp / (tp + fn):.2f}" if tp + fn else "-"
    return f"P {p} R {r} (people found {tp} of {tp + fn}; people-free flagged {fp} of {neg})"


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    items = collection()
    truth = np.array([it.human for it in items])
    groups = np.array([it.group for it in items])
    counts = {str(g): int((groups == g).sum()) for g in ("photo", "wallpaper", "lfw")}
    print(f"{len(items)} images: {counts}")
    print(f"people: {int(truth.sum())}, people-free: {int((~truth).sum())}")
    for label, settings in (("before: haar-alt2", BEFORE), ("after: dlib-hog", AFTER)):
        pred, secs = detect(items, settings)
        print(f"\n{label} ({secs * 1000:.0f} ms per image)")
        print(f"  all         {pr(pred, truth)}")
        for g in ("photo", "wallpaper", "lfw"):
            sel = groups == g
            print(f"  {g:11s} {pr(pred[sel], truth[sel])}")
        fps = [it.name for it, p in zip(items, pred, strict=True) if p and not it.human]
        print(f"  false positives: {', '.join(fps) or 'none'}")


if __name__ == "__main__":
    main()
