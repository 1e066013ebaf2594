"""What every command of the ``exokiratory`` CLI shares: the Typer app, the consoles, the global
options (accepted anywhere on the line), how a command finds its workspace, and its errors."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from exokiratory import __version__
from exokiratory.api.workspace import Workspace

app = typer.Typer(
    name="exokiratory",
    help="Restart-proof, multi-pass exploration of large image collections.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
#: stdout: a terminal gets its own width; a pipe or a file gets lines that are never cut
out = Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)

WorkspaceOpt = Annotated[
    str | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="EXOKIRATORY_WORKSPACE",
        help="Workspace root: local path, mounted Drive folder, or fsspec URL.",
    ),
]


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 1."""


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    # libraries' own chatter (FAISS's loader reports every CPU-feature build it tries)
    for noisy in ("faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


#: global options, accepted anywhere on the line (``exokiratory scan -w WS -q``) as git and
#: docker users expect: :func:`hoist_global_options` moves them before the command
GLOBAL_FLAGS = frozenset({"-q", "--quiet", "-v", "-vv", "-vvv", "--verbose"})
GLOBAL_VALUED = frozenset({"-w", "--workspace", "--storage-option"})


def hoist_global_options(argv: list[str]) -> list[str]:
    """``argv`` with the global options (``-w/--workspace X``, ``-q``, ``-v``) moved in front
    of the command, wherever they were (nothing after ``--`` is touched)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a in GLOBAL_FLAGS:
            front.append(a)
        elif a in GLOBAL_VALUED and i + 1 < len(argv):
            front.extend([a, argv[i + 1]])
            i += 1
        elif a.startswith(("--workspace=", "--storage-option=")):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


#: the global options given before the command (set by the callback on every invocation)
_GLOBAL: dict[str, Any] = {"workspace": None, "storage_options": {}}


def parse_storage_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (a VALUE that parses as JSON is taken as JSON: numbers, booleans,
    objects) over ``EXOKIRATORY_STORAGE_OPTIONS`` (a JSON object)."""
    opts: dict[str, Any] = {}
    env = os.environ.get("EXOKIRATORY_STORAGE_OPTIONS")
    if env:
        try:
            opts.update(json.loads(env))
        except json.JSONDecodeError as exc:
            raise CliError(f"EXOKIRATORY_STORAGE_OPTIONS is not a JSON object: {exc}") from None
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--storage-option takes KEY=VALUE, not {pair!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def find_workspace(start: Path | None = None) -> Path | None:
    """The workspace holding ``start`` (the current folder): the nearest folder at or above it
    with an exokiratory.yaml, as git finds its repository."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "exokiratory.yaml").is_file():
            return folder
    return None


def _open(workspace: str | None) -> Workspace:
    workspace = workspace or _GLOBAL["workspace"]
    if not workspace:
        found = find_workspace()
        workspace = str(found) if found is not None else None
    if not workspace:
        raise CliError(
            "no workspace given: pass -w/--workspace, set EXOKIRATORY_WORKSPACE, "
            "or run inside a workspace folder"
        )
    return Workspace(workspace, _GLOBAL["storage_options"] or None)


def _version(value: bool) -> None:
    if value:
        out.print(f"exokiratory {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    workspace: WorkspaceOpt = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Warnings only, no progress bars.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            help="KEY=VALUE for the workspace's fsspec file system (repeatable; e.g. "
            "endpoint_url=http://minio:9000, anon=true); also EXOKIRATORY_STORAGE_OPTIONS (JSON).",
        ),
    ] = None,
) -> None:
    _setup_logging(verbose, quiet)
    _GLOBAL["workspace"] = workspace
    _GLOBAL["storage_options"] = parse_storage_options(storage_option or [])
    if quiet:
        os.environ["EXOKIRATORY_PROGRESS"] = "0"
