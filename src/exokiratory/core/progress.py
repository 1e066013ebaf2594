"""Progress bars for long steps (rich), silenced with ``EXOKIRATORY_PROGRESS=0`` or ``quiet``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Advance(Protocol):
    def __call__(self, n: float = 1) -> None: ...


def progress_enabled() -> bool:
    flag = os.environ.get("EXOKIRATORY_PROGRESS", "")
    if flag:
        return flag not in ("0", "false", "no", "off")
    return sys.stderr.isatty()


@contextmanager
def progress_bar(
    description: str, total: float | None, enabled: bool | None = None
) -> Iterator[Advance]:
    """A context giving an ``advance(n)`` callable; a no-op when progress is disabled."""
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as prog:
        task = prog.add_task(description, total=total)

        def advance(n: float = 1) -> None:
            prog.advance(task, n)

        yield advance
