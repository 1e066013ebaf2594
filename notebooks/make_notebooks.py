"""Writes the Colab notebooks of this folder (run it after editing a cell here).

Every notebook: a markdown note, the same first code cell (mount Drive on Colab, install
exokiratory when missing, open or create the workspace), a ``parameters`` cell, then one cell
per step, each ending in files on the workspace. ``python notebooks/make_notebooks.py``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

RESUME = (
    "**After a kernel death** (Colab disconnects, runs out of memory, loses its GPU): run the "
    "setup cell again, then the cell that was running. Every cell writes its results to the "
    "workspace on Drive as it goes, so it resumes where the last committed batch ended and "
    "finishes with the same tables as an uninterrupted run."
)

SETUP = '''# Setup: mount Drive (on Colab only), install exokiratory if missing, open or create the workspace.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("exokiratory") is None:  # a fresh Colab kernel: install once
    spec = os.environ.get("EXOKIRATORY_PIP", "exokiratory[ml,report]")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)

from exokiratory.api.colab import setup

ROOT = None     # workspace folder; None: $EXOKIRATORY_WORKSPACE, on Colab /content/drive/MyDrive/exokiratory
SOURCES = None  # image folders for a new workspace; None: $EXOKIRATORY_SOURCES, on Colab .../MyDrive/photos
MODELS = None   # model profile for a new workspace: lite (default), full, tiny (random weights)
ws = setup(ROOT, SOURCES, models=MODELS)
print(ws, "sources:", [s.path for s in ws.config.sources])'''


def notebook(title: str, intro: str, params: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.cells.append(new_markdown_cell(f"# {title}\n\n{intro}\n\n{RESUME}"))
    nb.cells.append(new_code_cell(SETUP))
    nb.cells.append(new_code_cell(params, metadata={"tags": ["parameters"]}))
    for md, code in cells:
        if md:
            nb.cells.append(new_markdown_cell(md))
        nb.cells.append(new_code_cell(code))
    return nb


NOTEBOOKS = {
    "00_setup_and_scan": notebook(
        "exokiratory 00: workspace and scan (PASS 0)",
        "Creates the workspace on Drive and registers every image of the sources: IDs from the "
        "bytes, exact duplicates, unreadable files. Rerun it after adding images: only new and "
        "changed files are read.",
        "FORCE = False  # True takes over the scan lock of a kernel that died during a scan",
        [
            (
                "Scan the sources (writes `manifests/images/` and `manifests/paths/`).",
                "scan = ws.scan(force=FORCE)\nprint(scan.summary())",
            ),
            (
                "What the manifest holds.",
                'ws.df("SELECT status, error, count(*) AS n FROM images GROUP BY ALL ORDER BY n DESC")',
            ),
            (
                "",
                'ws.df("SELECT image_id, n_paths, first_path FROM images WHERE n_paths > 1 '
                'ORDER BY n_paths DESC LIMIT 20")',
            ),
        ],
    ),
    "01_sense_and_flags": notebook(
        "exokiratory 01: cheap signals and routing flags (PASS 1, PASS 2)",
        "Decodes every image once (probe, PASS 1 signals, text and face cues), then derives the "
        "routing flags: dark, blurry, duplicates, outliers, worth GPU time.",
        "LIMIT = None  # process at most this many images per pass (None: all)\n"
        "CUES = True   # text boxes and faces (needs the 'cues' extra)",
        [
            (
                "PASS 1: probe and cheap signals (writes `features/probe/`, `features/global/`).",
                'for r in ws.run(["probe", "sense"], limit=LIMIT):\n    print(r.summary())',
            ),
            (
                "Text and face cues, when the `cues` extra is installed.",
                "from exokiratory.engine.registry import pass_names\n\n"
                'if CUES and "cues" in pass_names():\n'
                '    (cues,) = ws.passes(["cues"])\n'
                "    missing = cues.missing_requirement()\n"
                "    if missing is None:\n"
                '        for r in ws.run(["cues"], limit=LIMIT):\n'
                "            print(r.summary())\n"
                "    else:\n"
                '        print("cues skipped: it", missing)',
            ),
            (
                "PASS 2: flags (writes `manifests/flags/`; seconds, rerun after changing a threshold).",
                'for r in ws.run(["flags"]):\n    print(r.summary())',
            ),
            (
                "",
                "st = ws.status()\n"
                'print({d.name: d.summary for d in st.derived if d.name == "flags"})\n'
                'ws.df("SELECT count(*) FILTER (WHERE is_worth_gpu) AS worth_gpu, '
                "count(*) FILTER (WHERE is_near_duplicate) AS near_duplicates, "
                'count(*) FILTER (WHERE is_junk) AS junk FROM flags")',
            ),
        ],
    ),
    "02_embeddings_index_search": notebook(
        "exokiratory 02: embeddings, clusters, index and search",
        "CLIP and DINOv2 embeddings of the routed images (a GPU helps: Runtime > Change runtime "
        "type), then zero-shot labels, cluster hierarchies, FAISS indices and search.",
        'LIMIT = None        # images per pass (None: all)\nQUERY = "a photo of a person"',
        [
            (
                "Embeddings (writes `embeddings/clip/...` and `embeddings/dino/...`).",
                'for r in ws.run(["embed-clip", "embed-dino"], limit=LIMIT):\n    print(r.summary())',
            ),
            (
                "Zero-shot labels, semantic flags and clusters: derivations over the stored "
                "embeddings (seconds).",
                "from exokiratory.engine.registry import pass_names\n\n"
                'steps = [n for n in ("zeroshot", "flags", "clusters-clip", "clusters-dino") '
                "if n in pass_names()]\n"
                "for r in ws.run(steps):\n    print(r.summary())",
            ),
            (
                "Similarity indices (writes `indices/`).",
                'for space in ("clip", "dino"):\n    print(ws.build_index(space).summary())',
            ),
            (
                "Search: by text (CLIP) and by image.",
                "hits = ws.search(text=QUERY, k=5)\nprint(hits)\n"
                'first = ws.sql("SELECT image_id FROM embeddings_dino WHERE error IS NULL LIMIT 1")'
                '["image_id"][0].as_py()\n'
                'ws.similar(first, space="dino", k=5)',
            ),
        ],
    ),
    "03_segments": notebook(
        "exokiratory 03: segments, segment embeddings and motifs (PASS 3, PASS 4)",
        "SAM masks of the routed images, their CLIP / DINOv2 embeddings and colour-texture "
        "statistics, and motifs (recurring segments). Each cell checks that its pass exists in "
        "the installed version and says so when it does not.",
        "LIMIT = None         # images per pass (None: all)\n"
        'SEGMENT_PARAMS = {}  # e.g. {"points_per_side": 16} for a faster, coarser pass',
        [
            (
                "PASS 3: segments (writes `segments/masks/`; the slowest pass, a GPU helps).",
                "from exokiratory.api.colab import configure\n"
                "from exokiratory.engine.registry import pass_names\n\n"
                'if "segment" not in pass_names():\n'
                '    print("this version of exokiratory has no segment pass")\n'
                "else:\n"
                "    if SEGMENT_PARAMS:\n"
                '        ws = configure(ws, "segment", **SEGMENT_PARAMS)\n'
                '    for r in ws.run(["segment"], limit=LIMIT):\n'
                "        print(r.summary())",
            ),
            (
                "PASS 4: segment embeddings and statistics (writes `segments/embeddings/`).",
                'steps = [n for n in ("segment-embed-clip", "segment-embed-dino", "segment-stats") '
                "if n in pass_names()]\n"
                "if not steps:\n"
                '    print("this version of exokiratory has no segment embedding passes")\n'
                "for r in ws.run(steps, limit=LIMIT) if steps else []:\n"
                "    print(r.summary())",
            ),
            (
                "Motifs: clusters of segments across images.",
                'if "motifs" in pass_names():\n'
                '    for r in ws.run(["motifs"]):\n'
                "        print(r.summary())\n"
                '    print(ws.df("SELECT space, count(*) AS segments, count(DISTINCT cluster_id) '
                'AS motifs FROM motifs GROUP BY ALL"))\n'
                "else:\n"
                '    print("this version of exokiratory has no motifs derivation")',
            ),
        ],
    ),
    "04_report": notebook(
        "exokiratory 04: diagnostics report",
        "Builds `reports/<name>.html` on the workspace: a single file to download and open "
        "(no server, works offline). It shows every table, the distributions with the flag "
        "thresholds, galleries, embedding maps and the stop-condition panel that tells you "
        "when further passes no longer change the structure.",
        'NAME = "report"\nSAMPLE = 2000   # points per embedding map',
        [
            (
                "Build the report (thumbnails are cached in `reports/thumbs/`: a rebuild makes "
                "only the missing ones).",
                "result = ws.report(NAME, sample=SAMPLE)\nprint(result.summary())",
            ),
            (
                "On Colab, download it (or open it from Drive).",
                "from exokiratory.api.colab import in_colab\n\n"
                "if in_colab():\n"
                "    from google.colab import files\n\n"
                "    files.download(result.local_path)\n"
                "else:\n"
                '    print("open", result.local_path or result.url)',
            ),
            (
                "Is another pass worth running? The four stop criteria (the report's 'When to "
                "move on' panel, `exokiratory stop`): value, threshold, state, and the verdict.",
                "stop = ws.stop()\n"
                "for row in stop.rows():  # criterion, value, threshold, state, why\n"
                '    print(*row.values(), sep=" | ")\n'
                'print(stop.verdict.decision, stop.verdict.run or "", "-", stop.verdict.why)',
            ),
        ],
    ),
    "05_captions": notebook(
        "exokiratory 05: selective captions (PASS 5)",
        "Captions only where the structure says it is worth it: cluster exemplars and a spread "
        "of members, motif outliers, rare motifs and high-entropy segments, most informative "
        "first, up to a budget (raise it later: nothing is captioned twice). A GPU helps. "
        "`lite` is Florence-2 (MIT, fast), `full` the seed's BLIP-2; `tiny` is random-weight "
        "gibberish for plumbing. Runs after notebooks 02 and 03 (clusters, motifs).",
        'MODEL = "lite"  # captioner: lite (Florence-2), full (BLIP-2), tiny (random weights)\n'
        "BUDGET = 2000   # units to caption, most informative first\n"
        "LIMIT = None    # units per run (None: the whole budget)",
        [
            (
                "Select, caption and embed the captions (writes `captions/selection/`, "
                "`captions/factual/`, `captions/embeddings/`).",
                "from exokiratory.api.colab import configure\n"
                "from exokiratory.engine.registry import pass_names\n"
                "from exokiratory.passes.captions.summary import summary_lines\n\n"
                'if "caption-factual" not in pass_names():\n'
                '    print("this version of exokiratory has no caption passes")\n'
                "else:\n"
                '    ws = configure(ws, "caption-select", max_units=BUDGET)\n'
                '    ws = configure(ws, "caption-factual", model=MODEL)\n'
                '    ws = configure(ws, "caption-embed")  # the CLIP model of embed-clip\n'
                '    for r in ws.run(["caption"], limit=LIMIT):\n'
                "        print(r.summary())\n"
                '    print("\\n".join(summary_lines(ws.status().captions)))\n'
                '    print(ws.df("SELECT unit_kind, text, clip_score, model_id FROM captions '
                'ORDER BY clip_score NULLS LAST LIMIT 10"))',
            ),
        ],
    ),
    "06_secondary_semantics": notebook(
        "exokiratory 06: OCR, depth and detection where the flags say (PASS 6)",
        "Secondary semantics, each only where it helps: OCR on the text images (scans, "
        "documents, screenshots: rapidocr's models ship in its wheel, CPU), relative depth on "
        "the photographs (Depth Anything V2 Small), open-vocabulary detection on the dense "
        "scenes (OWLv2, queries from `prompts/prompt_registry.yaml`). A GPU helps the last "
        "two. Runs after notebook 01 (the flags route every pass). Each pass writes its own "
        "folder under `semantics/` and its own view.",
        'MODEL = "lite"   # depth and detection: lite (Depth Anything V2 Small, OWLv2 base), '
        "tiny (random weights)\n"
        "LIMIT = None     # images per pass (None: all routed)\n"
        'SEARCH = "total" # words to look for in the OCR text',
        [
            (
                "OCR of the routed text images (writes `semantics/ocr/`), then the flags again: "
                "OCR confirms or refutes `is_text_heavy` (`is_text_confirmed`, "
                "`is_text_refuted`).",
                "from exokiratory.engine.registry import pass_names\n\n"
                'if "ocr" not in pass_names():\n'
                '    print("this version of exokiratory has no ocr pass")\n'
                "else:\n"
                '    for r in ws.run(["ocr", "flags"], limit=LIMIT):\n'
                "        print(r.summary())\n"
                '    print(ws.df("SELECT i.first_path, o.n_chars, o.mean_confidence, '
                "left(o.text, 60) AS text FROM ocr o JOIN images i USING (image_id) "
                'WHERE o.error IS NULL ORDER BY o.n_chars DESC LIMIT 10"))',
            ),
            (
                "Full-text search over the OCR text (`exokiratory search --ocr ...`).",
                'if "ocr" in pass_names():\n'
                "    from exokiratory.passes.ocr.search import search_ocr\n\n"
                "    with ws.catalog() as cat:\n"
                "        print(search_ocr(cat, SEARCH, k=5).to_pandas())",
            ),
            (
                "Relative depth of the routed photographs (writes `semantics/depth/`): summary "
                "statistics and a 64 px depth map per image.",
                "from exokiratory.api.colab import configure\n\n"
                'if "depth" in pass_names():\n'
                '    ws = configure(ws, "depth", model=MODEL)\n'
                '    for r in ws.run(["depth"], limit=LIMIT):\n'
                "        print(r.summary())\n"
                '    print(ws.df("SELECT image_id, depth_p50, near_fraction, far_fraction, '
                'planarity_score, depth_layering_score, model_id FROM depth LIMIT 10"))',
            ),
            (
                "Open-vocabulary detection on the routed dense scenes (writes "
                "`semantics/detect/`) and counts per query.",
                'if "detect" in pass_names():\n'
                '    ws = configure(ws, "detect", model=MODEL)\n'
                '    for r in ws.run(["detect"], limit=LIMIT):\n'
                "        print(r.summary())\n"
                '    print(ws.df("SELECT label, sum(count) AS n, count(*) AS images '
                'FROM detect_counts GROUP BY label ORDER BY n DESC"))',
            ),
            (
                "Routed / done / failed per pass.",
                "for p in ws.status().passes:\n"
                '    if p.name in ("ocr", "depth", "detect"):\n'
                '        print(f"{p.name} ({p.version}): {p.wanted} routed, {p.done} done, '
                '{p.failed} failed")',
            ),
        ],
    ),
    "07_synthesis": notebook(
        "exokiratory 07: re-aggregation and synthesis (PASS 7)",
        "Collapse upward without lying: motif bags per image, a co-occurrence graph of the motifs "
        "(with a shuffled baseline and communities), and image vs segment vs language compared, "
        "each agreement beside its chance baseline. Derivations only (no pixels, no GPU, "
        "seconds to minutes); each works with whatever notebooks 02-06 left and says what is "
        "missing. Writes `synthesis/`.",
        "N_SHUFFLES = 20  # co-occurrence baseline shuffles\n"
        "MIN_UNITS = 10   # smallest comparison reported",
        [
            (
                "Motif bags, co-occurrence graph, caption clusters and the comparisons (writes "
                "`synthesis/motif_bags/`, `synthesis/caption_clusters/`, `synthesis/agreement/`).",
                "from exokiratory.api.colab import configure\n"
                "from exokiratory.engine.registry import pass_names\n\n"
                'if "motif-bags" not in pass_names():\n'
                '    print("this version of exokiratory has no synthesis steps")\n'
                "else:\n"
                '    ws = configure(ws, "motif-bags", n_shuffles=N_SHUFFLES)\n'
                '    ws = configure(ws, "structure-agreement", min_units=MIN_UNITS)\n'
                '    for r in ws.run(["synthesis"]):\n'
                "        print(r.summary())\n"
                '    for v in ("motif_bags_notes", "caption_clusters_notes", '
                '"structure_agreement_notes"):\n'
                '        print(ws.df(f"SELECT part, status, n, detail FROM {v} '
                "WHERE status <> 'ok'\"))",
            ),
            (
                "Each comparison with its shuffled-label baseline, and the strongest motif "
                "associations.",
                'if "motif-bags" in pass_names():\n'
                '    print(ws.df("SELECT kind, left_clustering, left_level, right_clustering, n, '
                "ari, ari_baseline, ami, ami_baseline, is_above_baseline, random_weight_models "
                'FROM structure_agreement"))\n'
                '    print(ws.df("SELECT space, motif_a, motif_b, count, npmi, expected, z_score '
                'FROM motif_cooccurrence WHERE is_significant ORDER BY npmi DESC LIMIT 10"))\n'
                '    print(ws.df("SELECT clustering, level, cluster_id, n_captions, '
                "string_agg(term, ', ' ORDER BY rank) AS terms FROM caption_terms "
                'GROUP BY ALL ORDER BY clustering, level, cluster_id LIMIT 20"))',
            ),
            (
                "The co-occurrence graphs as GraphML (open them in Gephi or Cytoscape).",
                'if "motif-bags" in pass_names():\n'
                "    from exokiratory.passes.synthesis.step import graphml_paths\n\n"
                "    for path in graphml_paths(ws.storage):\n"
                "        print(ws.storage.path(path))",
            ),
        ],
    ),
    "08_generative_probing": notebook(
        "exokiratory 08: generative probing (PASS 8)",
        "What the dataset affords a generative model: Stable Diffusion 1.5 img2img on the "
        "cluster exemplars at a ladder of strengths with fixed seeds, and ControlNet on their "
        "depth maps (PASS 6) and Canny edges; every generation is stored as image bytes inside "
        "the Parquet rows (no file per image on Drive) and re-embedded with the CLIP and DINOv2 "
        "models of PASS 1. Then: style stability (does a generation stay in its exemplar's "
        "cluster?), holes in the manifold (generations farther from every real image than the "
        "real images are from each other) and fragile motifs. Needs a GPU (a T4 is enough: fp16 "
        "and model CPU offload); runs after notebooks 02 and 06 (clusters, depth), and uses the "
        "captions of notebook 05 as prompts where they exist. `tiny` is random-weight plumbing.",
        'MODEL = "lite"          # lite = full = SD 1.5 + ControlNet v1.1; tiny (random weights)\n'
        "EXEMPLARS = 16          # exemplars probed, largest clusters first\n"
        "STRENGTHS = [0.25, 0.5, 0.75, 0.9]\n"
        "SEEDS = [0, 1]\n"
        "SIZE = 512              # side of the generations, px\n"
        "STEPS = 30              # denoising steps (img2img runs strength x STEPS of them)\n"
        "LIMIT = None            # generations per run (None: all)",
        [
            (
                "Generate and re-embed (writes `genprobe/outputs/`), then derive the measures "
                "(`genprobe/measures/`).",
                "from exokiratory.api.colab import configure\n"
                "from exokiratory.engine.registry import pass_names\n\n"
                'if "genprobe" not in pass_names():\n'
                '    print("this version of exokiratory has no genprobe pass")\n'
                "else:\n"
                "    ws = configure(\n"
                '        ws, "genprobe", model=MODEL, controlnet_depth=MODEL, controlnet_canny=MODEL,\n'
                "        max_exemplars=EXEMPLARS, strengths=STRENGTHS, seeds=SEEDS, size=SIZE,\n"
                "        steps=STEPS,\n"
                "    )\n"
                '    for r in ws.run(["genprobe", "genprobe-measures"], limit=LIMIT):\n'
                "        print(r.summary())\n"
                '    print(ws.df("SELECT conditioning, count(*) AS n, count(error) AS errors, '
                "any_value(model_id) AS model FROM genprobe_outputs GROUP BY ALL\"))",
            ),
            (
                "The stability curve (mean fraction of generations that stay in the exemplar's "
                "cluster, per strength), the holes and the fragile motifs.",
                'if "genprobe" in pass_names():\n'
                '    print(ws.df("SELECT space, conditioning, strength, avg(stability_score) AS '
                'stability, avg(hole_fraction) AS holes FROM genprobe_stability GROUP BY ALL '
                'ORDER BY ALL"))\n'
                '    print(ws.df("SELECT gen_id, space, hole_score FROM genprobe_holes WHERE is_hole '
                'ORDER BY hole_score DESC LIMIT 10"))\n'
                '    print(ws.df("SELECT image_id, space, conditioning, strength, motif_cluster_id, '
                "fragility_score FROM genprobe_fragile WHERE is_fragile "
                'ORDER BY fragility_score DESC LIMIT 10"))',
            ),
            (
                "Reconstruction outliers (perturb, map back, measure) next to the embedding "
                "outlier scores of PASS 2, and one generation shown inline (bytes from the table).",
                'if "genprobe" in pass_names():\n'
                '    print(ws.df("SELECT image_id, space, conditioning, reconstruction_distance, '
                "reconstruction_outlier_score, embedding_outlier_score FROM genprobe_exemplars "
                'ORDER BY reconstruction_outlier_score DESC NULLS LAST LIMIT 10"))\n'
                "    import io\n\n"
                "    from PIL import Image\n\n"
                '    rows = ws.sql("SELECT image FROM genprobe_outputs WHERE image IS NOT NULL '
                'LIMIT 1").to_pylist()\n'
                "    if rows:\n"
                '        display(Image.open(io.BytesIO(rows[0]["image"])))  # noqa: F821',
            ),
        ],
    ),
}


def keep_cell_ids(nb: nbformat.NotebookNode, path: Path) -> None:
    """Reuse the cell ids of the notebook already at ``path`` for unchanged cells (nbformat
    draws new random ids each time), so that regenerating leaves unchanged notebooks
    byte-identical."""
    if not path.exists():
        return
    old = nbformat.read(path, as_version=4)
    for new_cell, old_cell in zip(nb.cells, old.cells, strict=False):
        same = (new_cell.cell_type, new_cell.source) == (old_cell.cell_type, old_cell.source)
        if same and "id" in old_cell:
            new_cell["id"] = old_cell["id"]


def main() -> None:
    for name, nb in NOTEBOOKS.items():
        keep_cell_ids(nb, HERE / f"{name}.ipynb")
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
