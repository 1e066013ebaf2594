"""Building a report: gather from the views, make the missing thumbnails, render, write atomically."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exokiratory.api.status import workspace_status
from exokiratory.core.config import default_workers
from exokiratory.core.progress import progress_bar
from exokiratory.report import galleries as gal
from exokiratory.report.histograms import flag_params, gather_histograms
from exokiratory.report.maps import gather_maps
from exokiratory.report.overview import gather_overview
from exokiratory.report.params import ReportParams
from exokiratory.report.render import ReportData, render
from exokiratory.report.stopping import gather_stop_panel
from exokiratory.report.tables import Tables
from exokiratory.report.thumbs import ThumbParams, ThumbStore

if TYPE_CHECKING:
    from exokiratory.api.workspace import Workspace
    from exokiratory.engine.step import Step

log = logging.getLogger(__name__)

REPORTS = "reports"

#: (view name, or prefix when it ends with "*") -> the report section that shows it
SPECIAL_SECTIONS: tuple[tuple[str, str], ...] = (
    ("images", "overview"),
    ("paths", "overview"),
    ("jobs", "overview"),
    ("features", "distributions"),
    ("flags", "galleries"),
    ("images_routed", "galleries"),
    ("embeddings_*", "maps"),
    ("clusters_*", "clusters"),
    ("segment*", "segments"),
    ("motif*", "segments"),
)


@dataclass
class ReportResult:
    rel: str
    url: str
    local_path: str | None
    seconds: float
    n_thumbs_made: int
    n_thumbs: int
    size_bytes: int

    def summary(self) -> str:
        return (
            f"report written to {self.local_path or self.url} ({self.size_bytes / 1e6:.1f} MB, "
            f"{self.n_thumbs} thumbnails, {self.n_thumbs_made} new); {self.seconds:.1f}s"
        )


def _producers(steps: list[Step], views: list[str]) -> dict[str, str]:
    """view -> the pass that fills it: the pass of that name, else the longest prefix
    (``clusters_clip_summary`` -> ``clusters-clip``)."""
    out: dict[str, str] = {}
    for v in views:
        match = [s for s in steps if v == s.view_name or v.startswith(s.view_name + "_")]
        if match:
            out[v] = max(match, key=lambda s: (v == s.view_name, len(s.view_name))).name
    return out


def _special(views: list[str]) -> dict[str, str]:
    out = {}
    for v in views:
        for pattern, anchor in SPECIAL_SECTIONS:
            if v == pattern or (pattern.endswith("*") and v.startswith(pattern[:-1])):
                out[v] = anchor
                break
    return out


def _hint(steps: list[Step], prefix: str) -> str | None:
    names = [s.name for s in steps if s.view_name.startswith(prefix)]
    return " ".join(names) if names else None


def _notes(tables: Tables, steps: list[Step]) -> dict[str, str]:
    notes = {}
    emb = _hint(steps, "embeddings_") or "embed-clip embed-dino"
    notes["maps"] = (
        f"not computed yet: run <code>exokiratory run {emb}</code> (needs the ml extra), "
        "then build the report again"
    )
    cl = _hint(steps, "clusters")
    notes["clusters"] = (
        f"not computed yet: run <code>exokiratory run {cl}</code>"
        if cl
        else "not computed yet: this workspace has no clustering (views <code>clusters_clip"
        "</code>, <code>clusters_dino</code>)"
    )
    seg = _hint(steps, "segment")
    mot = _hint(steps, "motif")
    if tables.nonempty("segments"):
        n = tables.get("segments")
        rows = n.rows if n is not None else 0
        notes["segments"] = f"{rows:,} segments; motifs not computed yet" + (
            f": run <code>exokiratory run {mot}</code>" if mot else ""
        )
    else:
        notes["segments"] = "not computed yet" + (
            f": run <code>exokiratory run {seg}</code>"
            if seg
            else " (no segment pass in this version)"
        )
    return notes


def build_report(
    ws: Workspace, params: ReportParams, *, progress: bool | None = None
) -> ReportResult:
    """Build ``reports/<name>.html`` for a workspace (see :mod:`exokiratory.report`)."""
    t0 = time.monotonic()
    steps = ws.passes()
    all_steps = ws._all_steps()
    with ws.catalog(steps) as cat, progress_bar("report", 6, progress) as advance:
        tables = Tables(cat)
        tables.summarise()
        advance()
        status = workspace_status(cat, steps)
        overview = gather_overview(tables, status)
        advance()
        fparams = flag_params(tables, ws.config.passes.get("flags"))
        feat_h, flag_h = gather_histograms(tables, fparams, params.histogram_bins)
        advance()
        offenders, unflagged = gal.offender_galleries(tables, params.gallery_size)
        labels = gal.label_gallery(tables, params.per_stratum)
        dups = gal.duplicate_galleries(tables, params.dup_groups)
        outliers = gal.outlier_galleries(tables, params.gallery_size)
        strata = gal.strata_gallery(tables, params.per_stratum, params.seed)
        exemplars = gal.exemplar_galleries(
            tables, params.exemplar_clusters, params.exemplars_per_cluster
        )
        motifs = gal.motif_galleries(tables, params.exemplar_clusters, params.exemplars_per_cluster)
        advance()
        maps = gather_maps(tables, params.map_sample, params.seed)
        advance()
        stop = gather_stop_panel(
            tables,
            ws.storage,
            status,
            stable_ari=params.stable_ari,
            stable_jaccard=params.stable_outlier_jaccard,
        )
        advance()
        galleries = [
            g for g in (*offenders, labels, *dups, *outliers, strata, *exemplars, *motifs) if g
        ]
        map_ids = sorted({i for m in maps for i in m.ids})
        wants = gal.wants_of(galleries, map_ids)
        info = [tables.info[v] for v in cat.views]
        producers = _producers(all_steps, list(cat.views))
        notes = _notes(tables, all_steps)
    store = ThumbStore(ws, ThumbParams(size=params.thumb_size))
    made = store.ensure(
        wants,
        workers=ws.config.run.workers or default_workers(),
        batch_size=ws.config.run.batch_size,
        progress=progress,
    )
    thumbs = store.read(wants.column("thumb_id").to_pylist())
    data = ReportData(
        title=f"exokiratory report: {params.name}",
        workspace=ws.storage.url,
        built_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        seconds=time.monotonic() - t0,
        overview=overview,
        stop=stop,
        feature_hists=feat_h,
        flag_hists=flag_h,
        offenders=offenders,
        unflagged=unflagged,
        labels=labels,
        duplicates=dups,
        outliers=outliers,
        strata=strata,
        exemplars=exemplars,
        motifs=motifs,
        maps=maps,
        tables=info,
        thumbs=thumbs,
        producers=producers,
        special=_special(list(tables.info)),
        notes=notes,
    )
    page = render(data).encode("utf-8")
    rel = f"{REPORTS}/{params.name}.html"
    ws.storage.write_bytes_atomic(rel, page)
    local = ws.storage.path(rel) if ws.storage.is_local else None
    result = ReportResult(
        rel,
        ws.storage.url.rstrip("/") + "/" + rel,
        local,
        time.monotonic() - t0,
        made,
        sum(1 for t in thumbs.values() if t.jpeg),
        len(page),
    )
    log.info("%s", result.summary())
    return result
