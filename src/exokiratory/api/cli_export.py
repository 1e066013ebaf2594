"""CLI commands ``sample`` and ``export`` (registered onto :data:`exokiratory.api.cli.app`)."""

from __future__ import annotations

from typing import Annotated

import typer

from exokiratory.api.cli_base import CliError, WorkspaceOpt, _open, app, out


def _split(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated values, in order."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


@app.command()
def sample(
    name: Annotated[str, typer.Argument(help="Sample name (letters, digits, _ . -).")],
    size: Annotated[int, typer.Option("--size", "-n", help="Images in the sample.", min=1)],
    workspace: WorkspaceOpt = None,
    space: Annotated[str, typer.Option(help="Cluster space of the balanced rule.")] = "clip",
    by: Annotated[
        str | None, typer.Option(help="Stratify by this per-image column (e.g. modality).")
    ] = None,
    where: Annotated[
        str | None, typer.Option(help="SQL condition over images and flags columns.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    rule: Annotated[
        str | None, typer.Option(help="balanced (default) | stratified (with --by) | uniform")
    ] = None,
    proportional: Annotated[
        bool, typer.Option(help="--by: keep the strata's proportions instead of equal shares.")
    ] = False,
    include_junk: Annotated[bool, typer.Option(help="Keep junk images.")] = False,
    include_duplicates: Annotated[
        bool, typer.Option(help="Keep non-canonical near duplicates.")
    ] = False,
    replace: Annotated[
        bool, typer.Option(help="New version from scratch when the arguments changed.")
    ] = False,
) -> None:
    """Draw a named, versioned sample (view `samples`): balanced over the cluster hierarchy
    (default), stratified by a column, or uniform; same arguments reproduce it, a larger
    --size grows it keeping its members."""
    ws = _open(workspace)
    result = ws.sample(
        name,
        size,
        space=space,
        by=by,
        where=where,
        seed=seed,
        rule=rule,
        include_junk=include_junk,
        include_duplicates=include_duplicates,
        allocation="proportional" if proportional else "equal",
        replace=replace,
    )
    out.print(result.summary(), soft_wrap=True, markup=False, highlight=False)


@app.command()
def export(
    targets: Annotated[
        list[str], typer.Argument(help="NAME[@VERSION] DEST, or DEST alone with --where.")
    ],
    to: Annotated[str, typer.Option("--to", help="manifest | files | hf | webdataset | fiftyone")],
    workspace: WorkspaceOpt = None,
    where: Annotated[
        str | None, typer.Option(help="Export the images of this SQL condition instead.")
    ] = None,
    columns: Annotated[
        list[str] | None,
        typer.Option("--columns", "-c", help="Columns to carry (repeat or comma-separate; is_*)."),
    ] = None,
    group_by: Annotated[
        str | None, typer.Option(help="files: one folder per value of this column.")
    ] = None,
    copy: Annotated[
        bool, typer.Option("--copy", help="files: copies, not symbolic links.")
    ] = False,
    shard_images: Annotated[
        int | None, typer.Option(help="Images per shard (default by format).", min=1)
    ] = None,
    dataset_name: Annotated[
        str | None, typer.Option(help="fiftyone: dataset name (default: DEST's name).")
    ] = None,
) -> None:
    """Export a sample or a SQL selection as a manifest, a file tree, a Hugging Face dataset,
    WebDataset shards or a FiftyOne dataset; a rerun after a kill completes it."""
    if where is None and len(targets) != 2:
        raise CliError("give NAME DEST (a sample), or --where SQL and DEST")
    if where is not None and len(targets) != 1:
        raise CliError("with --where give only DEST (no sample name)")
    ws = _open(workspace)
    report = ws.export(
        targets[-1],
        to=to,
        sample=targets[0] if where is None else None,
        where=where,
        columns=_split(columns),
        group_by=group_by,
        mode="copy" if copy else "symlink",
        shard_images=shard_images,
        dataset_name=dataset_name,
    )
    out.print(report.summary(), soft_wrap=True, markup=False, highlight=False)
