"""The ``exokiratory`` command line (Typer). Every command is a thin call into :class:`Workspace`;
the app, the global options and the workspace lookup live in :mod:`.cli_base`."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import typer
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

from exokiratory.api.cli_base import (
    CliError,
    WorkspaceOpt,
    _open,
    app,
    console,
    hoist_global_options,
    out,
)
from exokiratory.api.workspace import Workspace
from exokiratory.core.config import ConfigError
from exokiratory.core.lock import LockHeld


@app.command()
def init(
    workspace: Annotated[str, typer.Argument(help="Workspace root to create.")],
    source: Annotated[
        list[str], typer.Option("--source", "-s", help="Image folder or URL (repeatable).")
    ],
    exist_ok: Annotated[bool, typer.Option(help="Do not fail if the workspace exists.")] = False,
) -> None:
    """Create a workspace: the folder layout and a commented exokiratory.yaml."""
    ws = Workspace.init(workspace, source, exist_ok=exist_ok)
    out.print(f"initialised workspace {ws.storage.url} with {len(ws.config.sources)} source(s)")


@app.command()
def scan(
    workspace: WorkspaceOpt = None,
    force: Annotated[
        bool, typer.Option(help="Take over a scan lock held by a dead process.")
    ] = False,
) -> None:
    """PASS 0: register new and changed files (hash, format, header), mark vanished ones missing."""
    ws = _open(workspace)
    report = ws.scan(force=force)
    out.print(report.summary(), soft_wrap=True)


@app.command()
def run(
    passes: Annotated[list[str], typer.Argument(help="Pass names, or 'all'.")],
    workspace: WorkspaceOpt = None,
    limit: Annotated[
        int | None, typer.Option(help="Process at most N units per pass.", min=0)
    ] = None,
    engine: Annotated[str | None, typer.Option(help="local | ray (default: from config).")] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster (host:port) for --engine ray (default: config, RAY_ADDRESS)."
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Units per part file.", min=1)] = None,
    retry_errors: Annotated[
        bool, typer.Option(help="Recompute units that errored before.")
    ] = False,
    all_images: Annotated[
        bool,
        typer.Option(
            "--all", help="Model passes take every readable image, not only the routed ones."
        ),
    ] = False,
) -> None:
    """Run passes through the resume-safe runner (only units not yet done are processed).
    'embed' stands for embed-clip and embed-dino."""
    ws = _open(workspace)
    if engine not in (None, "local", "ray"):
        raise CliError(f"--engine must be 'local' or 'ray', not {engine!r}")
    reports = ws.run(
        passes,
        limit=limit,
        engine=engine,
        workers=workers,
        batch_size=batch_size,
        retry_errors=retry_errors,
        all_images=all_images,
        ray_address=ray_address,
    )
    failed = False
    for r in reports:
        out.print(r.summary(), soft_wrap=True)
        for f in r.failures[:10]:
            console.print(f"  [red]failed batch[/red] {escape(f)}", soft_wrap=True)
        failed |= not r.ok
    if failed:
        raise typer.Exit(1)


@app.command()
def status(
    workspace: WorkspaceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per pass: units done / wanted / failed, last run, newest errors; image and path counts."""
    ws = _open(workspace)
    st = ws.status()
    if as_json:
        out.print_json(json.dumps(st.to_dict(), default=str))
        return
    out.print(f"[bold]workspace[/bold] {st.workspace}")
    out.print(
        f"images: {_fmt_counts(st.images_by_status)}; paths: {_fmt_counts(st.paths_by_status)}"
    )
    out.print(
        f"exact-duplicate paths: {st.exact_duplicate_paths}; last scan: {st.last_scan or 'never'}"
    )
    t = Table("pass", "version", "done", "wanted", "failed", "remaining", "last run")
    for p in st.passes:
        t.add_row(
            p.name,
            p.version,
            str(p.done),
            str(p.wanted),
            str(p.failed),
            str(p.remaining),
            p.last_run or "never",
        )
    out.print(t)
    for d in st.derived:
        state = "up to date" if d.up_to_date else "stale: rerun `exokiratory run " + d.name + "`"
        if not d.rows:
            state = "not computed"
        out.print(f"[bold]{d.name}[/bold] ({d.version}): {d.rows} rows, {state}", soft_wrap=True)
        if d.summary:
            out.print("  " + ", ".join(f"{k} {v}" for k, v in d.summary.items()), soft_wrap=True)
    for a in st.cluster_agreement:
        out.print(
            f"clusters level {a['level']} (CLIP k={a['k_clip']}, DINO k={a['k_dino']}, "
            f"{a['n_images']} images): CLIP-vs-DINO ARI {_num(a['ari'])}, AMI {_num(a['ami'])}",
            soft_wrap=True,
        )
    from exokiratory.passes.captions.summary import summary_lines

    for line in summary_lines(st.captions):
        out.print(escape(line), soft_wrap=True)
    for p in st.passes:
        if p.last_failure:
            out.print(f"  [red]{p.name} FAILED[/red]: {escape(p.last_failure)}", soft_wrap=True)
        for key, err in p.recent_errors:
            out.print(f"  [red]{p.name}[/red] {escape(key)}: {escape(err)}", soft_wrap=True)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _fmt_counts(d: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in d.items()) or "none"


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL over the workspace's views (DuckDB dialect).")],
    workspace: WorkspaceOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
) -> None:
    """Query the workspace with DuckDB. Views: images, paths, paths_log, image_paths, jobs, one per pass."""
    if fmt not in ("table", "csv", "json"):
        raise CliError(f"--format must be table, csv or json, not {fmt!r}")
    ws = _open(workspace)
    table = ws.sql(query)
    if fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(_plain(table), buf)
        sys.stdout.write(buf.getvalue().decode("utf-8"))
    elif fmt == "json":
        sys.stdout.write(json.dumps(table.to_pylist(), default=str, ensure_ascii=False) + "\n")
    elif not sys.stdout.isatty():  # piped: every row and every full value, as CSV
        buf = io.BytesIO()
        pacsv.write_csv(_plain(table), buf)
        sys.stdout.write(buf.getvalue().decode("utf-8"))
    else:
        out.print(_rich_table(table, max_rows))


def _plain(table: pa.Table) -> pa.Table:
    """Cast nested columns to text so CSV can hold them."""
    cols = []
    for col in table.columns:
        if pa.types.is_nested(col.type) or pa.types.is_binary(col.type):
            cols.append(
                pa.array([json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
            )
        else:
            cols.append(col)
    return pa.table(cols, names=table.column_names)


def _rich_table(table: pa.Table, max_rows: int) -> Table:
    t = Table(*table.column_names)
    for row in table.slice(0, max_rows).to_pylist():
        t.add_row(*(_cell(v) for v in row.values()))
    if table.num_rows > max_rows:
        t.caption = f"{max_rows} of {table.num_rows} rows"
    return t


def _cell(v: Any) -> str:
    """A cell: floats shortened; long nested values (embeddings) cut on a terminal only,
    never ids or paths (strings are kept whole)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    if isinstance(v, str) or not sys.stdout.isatty():
        return s
    return s if len(s) <= 60 else s[:57] + "..."


index_app = typer.Typer(
    help="FAISS similarity indices over stored embeddings.", no_args_is_help=True
)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    spaces: Annotated[
        list[str] | None, typer.Argument(help="clip and/or dino (default: both present)")
    ] = None,
    workspace: WorkspaceOpt = None,
    kind: Annotated[str, typer.Option(help="auto | flat (exact) | hnsw")] = "auto",
    segments: Annotated[
        bool, typer.Option("--segments", help="Index segment embeddings (PASS 4) instead.")
    ] = False,
    engine: Annotated[
        str | None, typer.Option(help="local | ray: IVF shards as Ray tasks (default: config).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster for --engine ray (default: RAY_ADDRESS).")
    ] = None,
) -> None:
    """Build or extend indices/<space>.faiss (or segments-<space>.faiss) with its id map and
    metadata."""
    ws = _open(workspace)
    if engine not in (None, "local", "ray"):
        raise CliError(f"--engine must be 'local' or 'ray', not {engine!r}")
    with ws.catalog() as cat:
        if segments:
            present = [
                s
                for s in ("clip", "dino")
                if f"segment_embeddings_{s}" in cat.views
                and cat.scalar(f"SELECT count(*) FROM segment_embeddings_{s} WHERE error IS NULL")
            ]
        else:
            present = [s for s in ("clip", "dino") if f"embeddings_{s}" in cat.views]
    for space in spaces or present:
        rep = ws.build_index(space, kind, segments=segments, engine=engine, ray_address=ray_address)
        out.print(rep.summary(), soft_wrap=True)


def _print_hits(hits: pd.DataFrame, fmt: str) -> None:
    table = pa.Table.from_pandas(hits, preserve_index=False)
    if fmt == "json":
        sys.stdout.write(json.dumps(table.to_pylist(), default=str, ensure_ascii=False) + "\n")
    else:
        out.print(_rich_table(table, table.num_rows))


@app.command()
def search(
    workspace: WorkspaceOpt = None,
    text: Annotated[str | None, typer.Option(help="Text query (CLIP).")] = None,
    image: Annotated[
        str | None, typer.Option(help="An image id (segment id with --segments) or a file.")
    ] = None,
    space: Annotated[str, typer.Option(help="clip | dino")] = "clip",
    k: Annotated[int, typer.Option("-k", help="Number of results.", min=1)] = 10,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
    segments: Annotated[
        bool, typer.Option("--segments", help="Search segments; show their parent images.")
    ] = False,
    ocr: Annotated[
        str | None, typer.Option("--ocr", help="Words to find in the OCR text (no index).")
    ] = None,
) -> None:
    """Nearest images (or segments) to a text or an image, from the FAISS index of a space;
    or, with --ocr, the images whose recognised text holds the words."""
    ws = _open(workspace)
    if ocr is not None:
        from exokiratory.passes.ocr.search import search_ocr

        with ws.catalog() as cat:
            _print_hits(search_ocr(cat, ocr, k).to_pandas(), fmt)
        return
    _print_hits(ws.search(text=text, image=image, space=space, k=k, segments=segments), fmt)


@app.command()
def similar(
    image_id: Annotated[str, typer.Argument(help="A registered image id.")],
    workspace: WorkspaceOpt = None,
    space: Annotated[str, typer.Option(help="clip | dino")] = "clip",
    k: Annotated[int, typer.Option("-k", min=1)] = 10,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
) -> None:
    """Nearest images to a registered image (itself first)."""
    ws = _open(workspace)
    _print_hits(ws.similar(image_id, space=space, k=k), fmt)


@app.command()
def report(
    workspace: WorkspaceOpt = None,
    name: Annotated[str, typer.Option(help="Writes reports/<name>.html.")] = "report",
    sample: Annotated[
        int | None, typer.Option(help="Points per embedding map (default 2000).", min=10)
    ] = None,
    open_it: Annotated[
        bool, typer.Option("--open", help="Open the report in a web browser.")
    ] = False,
) -> None:
    """Build the static HTML diagnostics report (a file, no server): overview, when to move on,
    distributions with thresholds, galleries, embedding maps, every table."""
    ws = _open(workspace)
    result = ws.report(name, sample=sample)
    out.print(result.summary(), soft_wrap=True)
    if open_it:
        import webbrowser

        if result.local_path is None:
            raise CliError(f"the report is at {result.url}: copy it here to open it")
        webbrowser.open(Path(result.local_path).as_uri())


@app.command()
def stop(
    workspace: WorkspaceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Is another pass worth running? Four criteria (topology, segments, language, outliers)
    with numbers, thresholds and states, and a verdict: stop, or the pass to run and why."""
    result = _open(workspace).stop()
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    table = Table("criterion", "value", "threshold", "state", "why")
    for row in result.rows():
        table.add_row(*(escape(v) for v in row.values()))
    out.print(table)
    v = result.verdict
    out.print(f"[bold]{v.decision}[/bold]" + (f": run {v.run}" if v.run else ""))
    out.print(escape(v.why), soft_wrap=True)


@app.command()
def compact(
    passes: Annotated[
        list[str] | None, typer.Argument(help="Passes whose outputs to compact (default: all).")
    ] = None,
    workspace: WorkspaceOpt = None,
    target_mb: Annotated[
        int | None, typer.Option(help="Size of a compacted part (default run.compact_target_mb).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Rewrite many small part files as few large ones, with the same rows (safe to kill and
    rerun; readers see the same tables throughout). Runs by itself after a run that leaves a
    dataset with run.compact_min_parts small parts."""
    ws = _open(workspace)
    results = ws.compact(passes or None, target_mb=target_mb)
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in results]))
        return
    for r in results:
        if r.parts_before:
            out.print(r.summary(), soft_wrap=True)
    before = sum(r.parts_before for r in results)
    after = sum(r.parts_after for r in results)
    out.print(f"compacted: {before} -> {after} part files")


@app.command()
def demo(
    workspace: Annotated[
        Path | None, typer.Argument(help="Where to build the demo workspace.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.", min=1)] = None,
) -> None:
    """Build a sample collection (real photos, scans, graphics, duplicates, broken files) and run
    every pass on it, ending with a summary."""
    from exokiratory.api.demo import run_demo

    root = workspace or Path("exokiratory-demo")
    summary = run_demo(root, workers=workers)
    out.print(summary, soft_wrap=True)


def main() -> None:
    try:
        app(args=hoist_global_options(sys.argv[1:]), prog_name="exokiratory")
    except (
        CliError,
        ConfigError,
        LockHeld,
        ValueError,
        FileNotFoundError,
        RuntimeError,
        duckdb.Error,
    ) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(1)


from exokiratory.api import cli_export  # noqa: E402,F401  (registers the sample and export commands)
