"""The Colab notebooks run top to bottom in a real kernel (nbclient) against a local workspace
with the tiny models; the Drive mount is skipped outside Colab. Each notebook leaves its outputs
on disk, and running one again (as after a kernel death) resumes instead of redoing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exokiratory import Workspace
from exokiratory.core.config import RunConfig

from .conftest import NATURAL_PHOTOS, skimage_data_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("torch")

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"

#: notebook -> the parameters cell used here (small and fast: tiny random-weight models)
PARAMETERS = {
    "00_setup_and_scan": "FORCE = False",
    "01_sense_and_flags": "LIMIT = None\nCUES = False",
    "02_embeddings_index_search": 'LIMIT = None\nQUERY = "a cat"',
    "03_segments": (
        "LIMIT = 2\nSEGMENT_PARAMS = {'points_per_side': 2, 'crop_n_layers': 0, "
        "'mask_max_side': 48, 'pred_iou_thresh': 0.0, 'stability_score_thresh': 0.0, "
        "'min_thickness_pixels': 0.0, 'min_area_fraction': 0.001, 'routed_only': False}"
    ),
    "04_report": 'NAME = "notebook"\nSAMPLE = 100',
    "05_captions": 'MODEL = "tiny"\nBUDGET = 6\nLIMIT = None',
    "06_secondary_semantics": 'MODEL = "tiny"\nLIMIT = None\nSEARCH = "cat"',
    "07_synthesis": "N_SHUFFLES = 5\nMIN_UNITS = 3",
    "08_generative_probing": (
        'MODEL = "tiny"\nEXEMPLARS = 1\nSTRENGTHS = [0.5]\nSEEDS = [0]\nSIZE = 32\nSTEPS = 2\n'
        "LIMIT = None"
    ),
}

#: notebook -> files it must leave in the workspace
OUTPUTS = {
    "00_setup_and_scan": ["manifests/images", "manifests/paths"],
    "01_sense_and_flags": ["features/global/v1", "manifests/flags/CURRENT.json"],
    "02_embeddings_index_search": ["embeddings/clip", "indices/clip.faiss"],
    "03_segments": ["segments/masks"],
    "04_report": ["reports/notebook.html"],
    "05_captions": ["captions/selection/CURRENT.json", "captions/factual/tiny-caption"],
    "06_secondary_semantics": ["semantics/depth/v1-tiny-depth"],
    "07_synthesis": ["synthesis/motif_bags/CURRENT.json", "synthesis/agreement/CURRENT.json"],
    "08_generative_probing": ["genprobe/outputs", "genprobe/measures/CURRENT.json"],
}


def _run(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: one parameters cell"
    params[0].source = PARAMETERS[name]
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


def _outputs_text(nb: nbformat.NotebookNode) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


@pytest.mark.timeout(1800)  # about ten fresh kernels: 135 s quiet, 335 s on a shared machine
def test_notebooks_run_in_order_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for name in NATURAL_PHOTOS[:4]:
        shutil.copy(skimage_data_dir() / name, src / name)
    root = tmp_path / "ws"
    monkeypatch.setenv("EXOKIRATORY_WORKSPACE", str(root))
    monkeypatch.setenv("EXOKIRATORY_SOURCES", str(src))
    monkeypatch.setenv("EXOKIRATORY_MODELS", "tiny")
    monkeypatch.setenv("EXOKIRATORY_PROGRESS", "0")
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == list(PARAMETERS)
    # created here with one worker (process pools cost more than they save on 4 images); the
    # setup cell opens it, and would create it the same way from the environment
    Workspace.init(root, [str(src)], run=RunConfig(workers=1))
    for name in names:
        nb = _run(name, tmp_path)
        for rel in OUTPUTS[name]:
            assert (root / rel).exists(), f"{name} did not write {rel}"
        if name == "00_setup_and_scan":
            assert "4 new images" in _outputs_text(nb)
            # after a kernel death: the same notebook again resumes (nothing left to do)
            assert "0 new images" in _outputs_text(_run(name, tmp_path))
        if name == "03_segments":
            assert "segment (v1-tiny-sam" in _outputs_text(nb)
        if name == "05_captions":
            assert "RANDOM-WEIGHT" in _outputs_text(nb)


def test_setup_creates_then_opens_and_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exokiratory.api.colab import in_colab, setup

    for var in ("EXOKIRATORY_WORKSPACE", "EXOKIRATORY_SOURCES", "EXOKIRATORY_MODELS"):
        monkeypatch.delenv(var, raising=False)
    assert not in_colab()
    with pytest.raises(ValueError, match="EXOKIRATORY_WORKSPACE"):
        setup()
    with pytest.raises(ValueError, match="not a workspace yet"):
        setup(str(tmp_path / "ws"))
    ws = setup(str(tmp_path / "ws"), [str(tmp_path)], models="tiny")
    assert ws.config.passes["embed-clip"]["model"] == "tiny"
    monkeypatch.setenv("EXOKIRATORY_WORKSPACE", str(tmp_path / "ws"))
    again = setup(models="lite")  # an existing choice is kept
    assert again.config.passes["segment"]["model"] == "tiny"
    assert [s.path for s in again.config.sources] == [str(tmp_path)]
