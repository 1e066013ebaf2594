"""HTML rendering: one self-contained file (inline CSS, JS, SVG and JPEG thumbnails; no network).

Static parts (tables, histograms as SVG, galleries) are rendered here; the embedding maps are
drawn by the inline script from a JSON block, and thumbnails are stored once in another JSON
block (``exo-thumbs``) and referenced by ``data-thumb`` attributes, so an image shown in several
places is embedded once.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from exokiratory.report.galleries import Gallery, Tile
from exokiratory.report.histograms import Histogram
from exokiratory.report.maps import EmbeddingMap
from exokiratory.report.overview import Overview
from exokiratory.report.stopping import StopPanel
from exokiratory.report.tables import TableInfo
from exokiratory.report.thumbs import Thumb


@dataclass
class ReportData:
    title: str
    workspace: str
    built_at: str
    seconds: float
    overview: Overview
    stop: StopPanel
    feature_hists: list[Histogram]
    flag_hists: list[Histogram]
    offenders: list[Gallery]
    unflagged: list[str]
    labels: Gallery | None
    duplicates: list[Gallery]
    outliers: list[Gallery]
    strata: Gallery | None
    exemplars: list[Gallery]
    motifs: list[Gallery]
    maps: list[EmbeddingMap]
    tables: list[TableInfo]
    thumbs: dict[str, Thumb]
    producers: dict[str, str] = field(default_factory=dict)  # view -> pass that fills it
    special: dict[str, str] = field(default_factory=dict)  # view -> section anchor
    notes: dict[str, str] = field(default_factory=dict)  # section -> "not computed" message


def e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _asset(name: str) -> str:
    return resources.files("exokiratory.report").joinpath("assets", name).read_text("utf-8")


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def missing(text: str) -> str:
    return f'<p class="missing-data">{text}</p>'


def _counts_table(d: dict[str, int], head: str, total: int | None = None) -> str:
    if not d:
        return '<p class="note">none</p>'
    top = max(d.values()) or 1
    rows = "".join(
        f"<tr><td>{e(k)}</td><td class='num'>{_num(v)}</td>"
        f"<td><span class='bar' style='width:{max(1, round(120 * v / top))}px'></span></td></tr>"
        for k, v in d.items()
    )
    return f"<table class='grid'><tr><th>{e(head)}</th><th class='num'>n</th><th></th></tr>{rows}</table>"


def dict_table(rows: list[dict[str, Any]]) -> str:
    """A table of records (columns: the union of their keys, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_num(r.get(c))}</td>"
            if isinstance(r.get(c), int | float)
            else f"<td>{e(_num(r.get(c)))}</td>"
            for c in cols
        )
        + "</tr>"
        for r in rows
    )
    return f"<table class='grid'><tr>{head}</tr>{body}</table>"


# -- sections ----------------------------------------------------------------------------------
def render_stop(p: StopPanel) -> str:
    cls = p.verdict.replace(" ", "-")
    out = [
        "<section id='stop'><h2>When to move on</h2>",
        f"<div class='verdict {e(cls)}'>{e(p.verdict)}</div>",
        f"<p>{e(p.verdict_text)}</p>",
        "<table class='grid'><tr><th>check</th><th>value</th><th>state</th><th>rule</th></tr>",
    ]
    for c in p.checks:
        out.append(
            f"<tr><td>{e(c.name)}</td><td>{e(c.value)}</td>"
            f"<td class='state-{e(c.state)}'>{e(c.state)}</td><td class='note'>{e(c.detail)}</td></tr>"
        )
    out.append("</table>")
    out.append("<h3>Cluster agreement between CLIP and DINO</h3>")
    if p.agreement:
        out.append(dict_table(p.agreement))
    else:
        out.append(
            missing(
                "not computed yet: needs clusterings of both CLIP and DINO embeddings "
                "(views <code>clusters_clip</code>, <code>clusters_dino</code>)"
            )
        )
    out.append("<h3>Change of clustering between runs</h3>")
    if p.cluster_change:
        out.append(
            "<p class='note'>each clustering against its own previous run (recorded by the "
            "clustering derivations)</p>" + dict_table(p.cluster_change)
        )
    if p.between_runs:
        out.append(
            "<p class='note'>between report snapshots, on the images present in both</p>"
            + dict_table(p.between_runs)
        )
    elif p.previous is None:
        out.append(
            missing("no earlier report snapshot: build the report again after the next pass")
        )
    out.append("<h3>Outlier persistence</h3>")
    if p.persistence:
        out.append(dict_table(p.persistence))
    else:
        out.append(missing("not computed yet: needs flags outliers and cluster similarities"))
    snap = f"snapshot {e(p.snapshot)}" if p.snapshot else ""
    prev = f"; compared with {e(p.previous)}" if p.previous else ""
    out.append(f"<p class='note'>{snap}{prev}</p></section>")
    return "".join(out)


def render_overview(o: Overview) -> str:
    out = ["<section id='overview'><h2>Overview</h2><div class='cards'>"]
    out.append(
        f"<div class='card'><h3>images by status</h3>{_counts_table(o.images_by_status, 'status')}</div>"
    )
    out.append(
        f"<div class='card'><h3>paths by status</h3>{_counts_table(o.paths_by_status, 'status')}</div>"
    )
    dup = {
        "exact-duplicate paths": o.exact_duplicate_paths,
        "images with exact duplicates": o.images_with_exact_duplicates,
        "near-duplicate groups": o.near_duplicate_groups,
        "images in near-duplicate groups": o.near_duplicate_members,
    }
    out.append(f"<div class='card'><h3>duplicates</h3>{_counts_table(dup, 'kind')}</div>")
    if o.flags:
        flags = dict(sorted(o.flags.items(), key=lambda kv: -kv[1]))
        out.append(
            f"<div class='card'><h3>flags ({_num(o.n_flagged_images)} images with a problem "
            f"flag)</h3>{_counts_table(flags, 'flag')}</div>"
        )
    else:
        out.append(
            "<div class='card'><h3>flags</h3>"
            + missing("not computed yet: run <code>exokiratory run flags</code>")
            + "</div>"
        )
    if o.modality:
        out.append(
            f"<div class='card'><h3>modality ({e(o.modality_source)})</h3>"
            f"{_counts_table(o.modality, 'modality')}</div>"
        )
    else:
        out.append(
            "<div class='card'><h3>modality</h3>"
            + missing("not computed yet: no pass has written a <code>modality</code> column")
            + "</div>"
        )
    out.append("</div><h3>Passes</h3>")
    out.append(
        "<table class='grid'><tr><th>pass</th><th>version</th><th class='num'>done</th>"
        "<th class='num'>wanted</th><th class='num'>failed</th><th class='num'>remaining</th>"
        "<th class='num'>batches ok / failed</th><th class='num'>seconds</th><th>last run</th></tr>"
    )
    for p in o.passes:
        pct = f" ({100 * p.done / p.wanted:.0f}%)" if p.wanted else ""
        out.append(
            f"<tr><td>{e(p.name)}</td><td>{e(p.version)}</td><td class='num'>{_num(p.done)}{pct}"
            f"</td><td class='num'>{_num(p.wanted)}</td><td class='num'>{_num(p.failed)}</td>"
            f"<td class='num'>{_num(p.remaining)}</td><td class='num'>"
            f"{_num(p.batches.get('batches ok', 0))} / {_num(p.batches.get('batches failed', 0))}"
            f"</td><td class='num'>{p.seconds:.1f}</td><td>{e(p.last_run or 'never')}</td></tr>"
        )
    out.append("</table>")
    for d in o.derived:
        state = "up to date" if d.get("up_to_date") else "stale: rerun it"
        if not d.get("rows"):
            state = "not computed"
        out.append(
            f"<p>derived <b>{e(d.get('name'))}</b> ({e(d.get('version'))}): "
            f"{_num(d.get('rows', 0))} rows, {e(state)}</p>"
        )
    errs = [(p.name, k, m) for p in o.passes for k, m in p.errors]
    if errs:
        out.append(
            "<h3>Newest errors</h3><table class='grid'><tr><th>pass</th><th>unit</th><th>error</th></tr>"
        )
        for name, k, m in errs:
            out.append(
                f"<tr><td>{e(name)}</td><td><code>{e(k[:16])}</code></td><td class='err'>{e(m)}</td></tr>"
            )
        out.append("</table>")
    other = {k: v for k, v in o.jobs_by_pass.items() if k not in {p.name for p in o.passes}}
    if other:
        out.append(
            "<h3>Other logged steps</h3><table class='grid'><tr><th>step</th><th class='num'>batches ok</th><th class='num'>failed</th><th class='num'>units</th><th class='num'>seconds</th><th>last</th></tr>"
        )
        for k, v in other.items():
            out.append(
                f"<tr><td>{e(k)}</td><td class='num'>{_num(v['batches ok'])}</td>"
                f"<td class='num'>{_num(v['batches failed'])}</td><td class='num'>{_num(v['units'])}"
                f"</td><td class='num'>{v['seconds']:.1f}</td><td>{e(v['last'] or '')}</td></tr>"
            )
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


def render_histogram(h: Histogram) -> str:
    w, hgt, left, bottom, top = 300, 150, 8, 30, 22
    pw, ph = w - 2 * left, hgt - bottom - top
    parts = [f"<svg width='{w}' height='{hgt}' viewBox='0 0 {w} {hgt}' role='img'>"]
    title = h.column + (" (log x)" if h.log_x else "")
    parts.append(f"<text x='{left}' y='14' font-size='12' font-weight='600'>{e(title)}</text>")
    if h.categories is not None:
        top_n = max((c for _, c in h.categories), default=1) or 1
        bw = pw / max(1, len(h.categories))
        for i, (label, c) in enumerate(h.categories):
            bh = ph * c / top_n
            x = left + i * bw
            parts.append(
                f"<rect x='{x + 1:.1f}' y='{top + ph - bh:.1f}' width='{max(1.0, bw - 2):.1f}' "
                f"height='{bh:.1f}' fill='#5b7fce'><title>{e(label)}: {c}</title></rect>"
            )
            if len(h.categories) <= 8:
                parts.append(
                    f"<text x='{x + bw / 2:.1f}' y='{top + ph + 12}' font-size='10' "
                    f"text-anchor='middle'>{e(label)}</text>"
                )
    elif h.counts:
        peak = max(h.counts) or 1
        bw = pw / len(h.counts)
        for i, c in enumerate(h.counts):
            if not c:
                continue
            bh = max(1.0, ph * c / peak)
            lo, hi = h.edges[i], h.edges[i + 1]
            parts.append(
                f"<rect x='{left + i * bw:.1f}' y='{top + ph - bh:.1f}' width='{max(0.5, bw - 0.6):.1f}'"
                f" height='{bh:.1f}' fill='#5b7fce'><title>{lo:.4g} .. {hi:.4g}: {c}</title></rect>"
            )
        lo, hi = h.edges[0], h.edges[-1]
        parts.append(
            f"<line x1='{left}' y1='{top + ph}' x2='{left + pw}' y2='{top + ph}' stroke='#888'/>"
            f"<text x='{left}' y='{top + ph + 12}' font-size='10'>{lo:.3g}</text>"
            f"<text x='{left + pw}' y='{top + ph + 12}' font-size='10' text-anchor='end'>{hi:.3g}</text>"
        )
        for i, t in enumerate(h.thresholds):
            if h.log_x:
                if t.value <= 0:
                    continue
                frac = (math.log(t.value) - math.log(lo)) / (math.log(hi) - math.log(lo))
            else:
                frac = (t.value - lo) / (hi - lo) if hi > lo else 0.5
            x = left + min(1.0, max(0.0, frac)) * pw
            arrow = "&#8592;" if t.side == "below" else "&#8594;"
            label = f"{t.label.removeprefix('is_')} {t.value:.3g}"
            # the label goes on the flagged side unless it would leave the plot
            room = (x - left) if t.side == "below" else (left + pw - x)
            right = t.side == "above" if room > 6 * len(label) else t.side == "below"
            text = f"{label} {arrow}" if t.side == "below" else f"{arrow} {label}"
            parts.append(
                f"<line class='threshold' x1='{x:.1f}' y1='{top - 4}' x2='{x:.1f}' y2='{top + ph}' "
                f"stroke='#c62828' stroke-width='1.6' stroke-dasharray='4 2'>"
                f"<title>{e(t.label)} threshold {t.value:.4g}</title></line>"
                f"<text x='{x + (3 if right else -3):.1f}' y='{top + 6 + 11 * i}' font-size='10' "
                f"fill='#c62828' text-anchor='{'start' if right else 'end'}'>{text}</text>"
            )
    else:
        parts.append(f"<text x='{left}' y='60' font-size='11'>{e(h.note or 'no data')}</text>")
    foot = f"n={h.n:,}"
    if h.n_missing:
        foot += f", missing {h.n_missing:,}"
    if h.under or h.over:
        foot += f", outside axis {h.under:,} below / {h.over:,} above"
    parts.append(f"<text x='{left}' y='{hgt - 4}' font-size='10' fill='#5d6677'>{e(foot)}</text>")
    parts.append("</svg>")
    return f"<div class='hist' data-column='{e(h.column)}'>{''.join(parts)}</div>"


def render_distributions(feats: list[Histogram], flags: list[Histogram]) -> str:
    out = [
        "<section id='distributions'><h2>Distributions</h2>",
        "<p class='note'>PASS 1 signals over all sensed images (aggregated in DuckDB: exact "
        "counts per bin); dashed red lines are the flag thresholds that made the current "
        "flags, the arrow points to the flagged side. Axis from p0.5 to p99.5, widened to show "
        "the thresholds.</p>",
    ]
    if feats:
        out.append("<h3>PASS 1 signals</h3><div class='hists'>")
        out += [render_histogram(h) for h in feats]
        out.append("</div>")
    else:
        out.append(missing("not computed yet: run <code>exokiratory run sense</code>"))
    if flags:
        out.append("<h3>Flag scores</h3><div class='hists'>")
        out += [render_histogram(h) for h in flags]
        out.append("</div>")
    elif feats:
        out.append(missing("flag scores not computed yet: run <code>exokiratory run flags</code>"))
    out.append("</section>")
    return "".join(out)


def render_tile(t: Tile, thumbs: dict[str, Thumb]) -> str:
    th = thumbs.get(t.thumb_id)
    cls = "tile canonical" if t.badge == "canonical" else "tile"
    if th is not None and th.jpeg:
        inner = (
            f"<img data-thumb='{e(t.thumb_id)}' width='{th.width}' height='{th.height}' "
            f"alt='{e(t.caption or t.thumb_id[:12])}'>"
        )
    else:
        why = th.error if th is not None and th.error else "no thumbnail (not readable)"
        inner = f"<div class='nothumb'>{e(why)}</div>"
    return (
        f"<figure class='{cls}' title='{e(t.title)}'><div class='frame'>{inner}</div>"
        f"<figcaption>{e(t.caption or t.title.rsplit('/', 1)[-1])}</figcaption></figure>"
    )


def render_gallery(g: Gallery, thumbs: dict[str, Thumb]) -> str:
    out = [f"<div class='gallery-block' id='{e(g.key)}'><h3>{e(g.title)}</h3>"]
    if g.note:
        out.append(f"<p class='note'>{e(g.note)}</p>")
    if g.tiles:
        out.append(
            "<div class='gallery'>" + "".join(render_tile(t, thumbs) for t in g.tiles) + "</div>"
        )
    for name, tiles in g.groups:
        out.append(
            f"<div class='group'><h4>{e(name)}</h4><div class='gallery'>"
            + "".join(render_tile(t, thumbs) for t in tiles)
            + "</div></div>"
        )
    if not g.tiles and not g.groups:
        out.append("<p class='note'>no images</p>")
    out.append("</div>")
    return "".join(out)


def render_galleries(d: ReportData) -> str:
    out = ["<section id='galleries'><h2>Galleries</h2>"]
    if d.offenders or d.unflagged:
        out.append("<h3>Worst offenders per flag</h3>")
        out += [render_gallery(g, d.thumbs) for g in d.offenders]
        if d.unflagged:
            names = ", ".join(f"<code>{e(f)}</code>" for f in d.unflagged)
            out.append(f"<p class='note'>no image flagged: {names}</p>")
        if d.labels is not None:
            out.append(render_gallery(d.labels, d.thumbs))
    else:
        out.append(missing("flags not computed yet: run <code>exokiratory run flags</code>"))
    out += [render_gallery(g, d.thumbs) for g in d.duplicates]
    out.append("<h3>Embedding outliers</h3>")
    if d.outliers:
        out += [render_gallery(g, d.thumbs) for g in d.outliers]
    else:
        out.append(missing(d.notes.get("clusters", "not computed yet: needs clusters")))
    if d.strata is not None:
        out.append(render_gallery(d.strata, d.thumbs))
    out.append("</section>")
    return "".join(out)


def _map_json(m: EmbeddingMap) -> dict[str, Any]:
    colours = []
    for f in m.colours:
        counts = Counter(f.values)
        labels = sorted(counts, key=lambda k: (k == "(none)", -counts[k], k))
        index = {k: i for i, k in enumerate(labels)}
        colours.append(
            {
                "name": f.name,
                "labels": labels,
                "counts": [counts[k] for k in labels],
                "codes": [index[v] for v in f.values],
            }
        )
    return {
        "space": m.space,
        "ids": m.ids,
        "paths": m.paths,
        "x": [round(float(v), 4) for v in m.xy[:, 0]],
        "y": [round(float(v), 4) for v in m.xy[:, 1]],
        "colours": colours,
    }


def render_maps(d: ReportData) -> str:
    out = ["<section id='maps'><h2>Embedding maps</h2>"]
    if not d.maps:
        out.append(missing(d.notes.get("maps", "not computed yet")))
    for i, m in enumerate(d.maps):
        opts = "".join(f"<option value='{j}'>{e(f.name)}</option>" for j, f in enumerate(m.colours))
        out.append(
            f"<div class='mapbox' data-map='{i}' id='map-{e(m.space)}'>"
            f"<h3>{e(m.space.upper())}: {len(m.ids):,} images</h3>"
            f"<p class='note'>{e(m.method)}; {e(m.note or 'every embedded image')}; hover a point "
            "for its thumbnail</p>"
            f"<div class='controls'>colour by <select>{opts}</select></div>"
            "<canvas></canvas><div class='legend'></div></div>"
        )
    out.append("</section>")
    return "".join(out)


def render_clusters(d: ReportData) -> str:
    out = ["<section id='clusters'><h2>Clusters</h2>"]
    if d.exemplars:
        out += [render_gallery(g, d.thumbs) for g in d.exemplars]
    else:
        out.append(missing(d.notes.get("clusters", "not computed yet")))
    out.append("</section><section id='segments'><h2>Segments and motifs</h2>")
    if d.motifs:
        out += [render_gallery(g, d.thumbs) for g in d.motifs]
    else:
        out.append(missing(d.notes.get("segments", "not computed yet")))
    out.append("</section>")
    return "".join(out)


def render_table_info(t: TableInfo, d: ReportData) -> str:
    anchor = d.special.get(t.name)
    link = f" &middot; <a href='#{e(anchor)}'>section</a>" if anchor else ""
    if t.error:
        return f"<details><summary><b>{e(t.name)}</b> <span class='err'>{e(t.error)}</span></summary></details>"
    state = ""
    if t.rows == 0:
        prod = d.producers.get(t.name)
        state = (
            f" &middot; <span class='missing-data'>not computed yet: run <code>exokiratory run "
            f"{e(prod)}</code></span>"
            if prod
            else " &middot; <span class='note'>empty</span>"
        )
    rows = []
    for s in t.summaries:
        stats = []
        if s.n_true is not None:
            stats.append(f"true {_num(s.n_true)}")
        if s.distinct is not None:
            stats.append(f"~{_num(s.distinct)} distinct")
        if s.minimum is not None:
            stats.append(f"min {_num(s.minimum)}")
        if s.maximum is not None:
            stats.append(f"max {_num(s.maximum)}")
        if s.mean is not None:
            stats.append(f"mean {_num(s.mean)}")
        rows.append(
            f"<tr><td>{e(s.name)}</td><td>{e(s.sql_type)}</td><td class='num'>"
            f"{_num(s.non_null)}</td><td>{e(', '.join(stats))}</td></tr>"
        )
    return (
        f"<details class='table-info' data-table='{e(t.name)}'><summary><b>{e(t.name)}</b> "
        f"<span class='rows'>{_num(t.rows)} rows, {len(t.columns)} columns</span>{link}{state}"
        "</summary><table class='grid'><tr><th>column</th><th>type</th><th class='num'>non-null"
        f"</th><th>summary</th></tr>{''.join(rows)}</table></details>"
    )


def render_tables(d: ReportData) -> str:
    out = [
        "<section id='tables'><h2>Every table</h2>",
        "<p class='note'>Every SQL view of the workspace (query them with <code>exokiratory sql"
        "</code>): rows and a summary of each column. A table added by a new pass appears here "
        "on the next build.</p>",
    ]
    out += [render_table_info(t, d) for t in d.tables]
    out.append("</section>")
    return "".join(out)


def _script_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def render(d: ReportData) -> str:
    thumbs = {k: base64.b64encode(v.jpeg).decode("ascii") for k, v in d.thumbs.items() if v.jpeg}
    n_images = sum(d.overview.images_by_status.values())
    nav = "".join(
        f"<a href='#{a}'>{t}</a>"
        for a, t in (
            ("stop", "when to move on"),
            ("overview", "overview"),
            ("distributions", "distributions"),
            ("galleries", "galleries"),
            ("maps", "maps"),
            ("clusters", "clusters"),
            ("segments", "segments"),
            ("tables", "every table"),
        )
    )
    body = "".join(
        [
            render_stop(d.stop),
            render_overview(d.overview),
            render_distributions(d.feature_hists, d.flag_hists),
            render_galleries(d),
            render_maps(d),
            render_clusters(d),
            render_tables(d),
        ]
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{e(d.title)}</title><style>{_asset('report.css')}</style></head><body>"
        f"<header><h1>{e(d.title)}</h1><p>{e(d.workspace)} &middot; {n_images:,} images &middot; "
        f"built {e(d.built_at)} in {d.seconds:.1f}s</p><nav>{nav}</nav></header><main>{body}</main>"
        "<div id='tooltip'></div>"
        f"<script type='application/json' id='exo-thumbs'>{_script_json(thumbs)}</script>"
        f"<script type='application/json' id='exo-maps'>{_script_json([_map_json(m) for m in d.maps])}</script>"
        f"<script>{_asset('report.js')}</script></body></html>"
    )
