"""Running one pass end to end: plan, execute, log jobs, report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exokiratory.core.catalog import Catalog
from exokiratory.core.jobs import JobLog, recover_jobs
from exokiratory.core.progress import progress_bar
from exokiratory.core.storage import Storage
from exokiratory.engine.batch import BatchResult
from exokiratory.engine.executors import Executor
from exokiratory.engine.planner import Batch, plan
from exokiratory.engine.step import BatchContext, Pass

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    pass_name: str
    version: str
    wanted: int = 0
    already_done: int = 0
    planned: int = 0
    processed: int = 0
    unit_errors: int = 0
    batches_ok: int = 0
    batches_failed: int = 0
    batches_skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.batches_failed == 0

    def summary(self) -> str:
        return (
            f"{self.pass_name} ({self.version}): {self.processed}/{self.planned} units processed "
            f"({self.unit_errors} with errors), {self.already_done} already done of "
            f"{self.wanted} wanted; batches: {self.batches_ok} ok, {self.batches_skipped} skipped, "
            f"{self.batches_failed} failed; {self.seconds:.1f}s"
        )


def run_pass(
    p: Pass,
    storage: Storage,
    ctx: BatchContext,
    executor: Executor,
    *,
    batch_size: int,
    limit: int | None = None,
    retry_errors: bool = False,
    progress: bool | None = None,
    catalog: Callable[[], Catalog] | None = None,
) -> RunReport:
    """Plan ``p`` (with ``catalog()``, which must define every view the pass's units need;
    default: a catalog of the pass alone), then run its batches on ``executor``."""
    t0 = time.monotonic()
    with catalog() if catalog is not None else Catalog(storage, [p]) as cat:
        the_plan = plan(
            p,
            cat,
            batch_size=batch_size,
            limit=limit,
            retry_errors=retry_errors,
            workers=getattr(executor, "workers", None) or 1,
        )
    report = RunReport(
        p.name,
        p.full_version,
        wanted=the_plan.wanted,
        already_done=the_plan.done,
        planned=the_plan.todo.num_rows,
    )
    jobs = JobLog(storage, p.name, p.full_version, executor.name)
    recovered = recover_jobs(storage, p.name, p.full_version, p.output_rel)
    if recovered:
        log.info("%s: recovered %d batch records of an interrupted run", p.name, recovered)
    with progress_bar(f"{p.name}", the_plan.todo.num_rows, progress) as advance:

        def on_done(batch: Batch, res: BatchResult) -> None:
            rec = res.record
            jobs.add(rec)
            if rec.status == "ok":
                report.batches_ok += 1
                report.processed += rec.n_units
                report.unit_errors += rec.n_errors
            elif rec.status == "skipped":
                report.batches_skipped += 1
            else:
                report.batches_failed += 1
                report.failures.append(f"{batch.name}: {rec.error}")
            advance(batch.n_units)

        try:
            executor.run(p, ctx, the_plan.batches(), on_done)
        finally:
            jobs.flush()
    report.seconds = time.monotonic() - t0
    return report
