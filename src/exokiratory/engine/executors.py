"""Executors run batches; they are separate from passes (one batch function, many executors).

* ``local``: in-process when ``workers == 1``, else a process pool (spawned processes, so no
  inherited thread state), with at most ``2 x workers`` batches in flight (bounded memory).
* ``ray``: the same batch function as Ray tasks (GPU passes ask for one GPU per task); the part
  files are the same, so the tables are byte-for-byte those of ``local``.

Both call ``on_done`` in the driver for every finished batch, which logs it to the jobs table.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from exokiratory.core.jobs import JobRecord, utcnow
from exokiratory.engine.batch import BatchResult, run_batch
from exokiratory.engine.planner import Batch
from exokiratory.engine.step import BatchContext, Pass, PassSetupError

log = logging.getLogger(__name__)

OnDone = Callable[[Batch, BatchResult], None]


def _failed(batch: Batch, exc: BaseException) -> BatchResult:
    return BatchResult(
        JobRecord(
            batch.name,
            "failed",
            batch.n_units,
            error=f"{type(exc).__name__}: {exc}",
            finished_at=utcnow(),
        )
    )


def _worker_context() -> mp.context.BaseContext:
    """Workers fork from a fork server that imported the batch code once (no per-worker
    re-import, and no fork of this possibly multi-threaded process); spawn where fork servers
    do not exist. The server and its workers run one BLAS/OpenMP thread each."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["exokiratory.engine.batch", "exokiratory.passes"])
    return ctx


class Executor(ABC):
    name: str

    @abstractmethod
    def run(
        self, p: Pass, ctx: BatchContext, batches: Iterable[Batch], on_done: OnDone
    ) -> None: ...


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers

    def run(self, p: Pass, ctx: BatchContext, batches: Iterable[Batch], on_done: OnDone) -> None:
        if self.workers == 1:
            try:
                self._run_in_process(p, ctx, batches, on_done)
            finally:
                p.release()
            return
        self._run_pool(p, ctx, iter(batches), on_done)

    def _run_in_process(
        self, p: Pass, ctx: BatchContext, batches: Iterable[Batch], on_done: OnDone
    ) -> None:
        """Batches one after another in this process; the pass is told the next batch."""
        it = iter(batches)
        b = next(it, None)
        while b is not None:
            nxt = next(it, None)
            p.lookahead(nxt.units if nxt is not None else None)
            try:
                res = run_batch(p, ctx, b)
            except PassSetupError as exc:
                log.error("%s cannot run: %s", p.name, exc)
                on_done(b, _failed(b, exc))
                return  # every other batch would fail the same way
            except Exception as exc:
                log.error("%s: batch %s failed: %s", p.name, b.name, exc)
                res = _failed(b, exc)
            on_done(b, res)
            b = nxt

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=_worker_context())

    def _run_pool(
        self, p: Pass, ctx: BatchContext, batches: Iterator[Batch], on_done: OnDone
    ) -> None:
        max_in_flight = 2 * self.workers
        pool = self._new_pool()
        inflight: dict[Future[BatchResult], Batch] = {}
        exhausted = False
        try:
            while inflight or not exhausted:
                while not exhausted and len(inflight) < max_in_flight:
                    b = next(batches, None)
                    if b is None:
                        exhausted = True
                        break
                    inflight[pool.submit(run_batch, p, ctx, b)] = b
                if not inflight:
                    break
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    b = inflight.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool as exc:
                        log.error("%s: a worker process died during batch %s", p.name, b.name)
                        res = _failed(b, exc)
                        pool.shutdown(cancel_futures=True)
                        pool = self._new_pool()
                        for other_fut, other in list(inflight.items()):
                            on_done(other, _failed(other, exc))
                            inflight.pop(other_fut)
                    except Exception as exc:
                        log.error("%s: batch %s failed: %s", p.name, b.name, exc)
                        res = _failed(b, exc)
                    on_done(b, res)
        finally:
            pool.shutdown(cancel_futures=True)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None):
        self.workers = workers
        self.address = address

    def _init(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("the ray engine needs Ray: pip install 'exokiratory[ray]'") from exc
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["include_dashboard"] = False
                if self.workers:
                    kwargs["num_cpus"] = self.workers
            ray.init(**kwargs)
        return ray

    def run(self, p: Pass, ctx: BatchContext, batches: Iterable[Batch], on_done: OnDone) -> None:
        if ctx.workspace_url.startswith("memory://"):
            raise RuntimeError(
                "the ray engine cannot use a memory:// workspace (not shared between processes)"
            )
        ray = self._init()
        if p.resources == "gpu":
            self._run_on_actors(ray, p, ctx, batches, on_done)
            return
        remote = ray.remote(num_cpus=1, max_retries=2)(run_batch)
        total_cpus = int(ray.cluster_resources().get("CPU", 1))
        max_in_flight = 2 * max(1, self.workers or total_cpus)
        pending: dict[Any, Batch] = {}
        it = iter(batches)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < max_in_flight:
                b = next(it, None)
                if b is None:
                    exhausted = True
                    break
                pending[remote.remote(p, ctx, b)] = b
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                b = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:
                    log.error("%s: batch %s failed on ray: %s", p.name, b.name, exc)
                    res = _failed(b, exc)
                on_done(b, res)

    def _run_on_actors(
        self, ray: Any, p: Pass, ctx: BatchContext, batches: Iterable[Batch], on_done: OnDone
    ) -> None:
        """Model passes: one long-lived actor per GPU (``workers`` of them, default: every GPU
        of the cluster; one CPU actor on a cluster without GPUs). Each actor loads the model
        once and keeps it for every batch it is given; at most two batches wait per actor."""
        n_gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = max(1, self.workers or n_gpus or 1)
        actor_cls = ray.remote(
            num_cpus=1, num_gpus=1 if n_gpus else 0, max_restarts=2, max_task_retries=2
        )(BatchActor)
        actors = [actor_cls.remote() for _ in range(n_actors)]
        load = dict.fromkeys(range(n_actors), 0)
        pending: dict[Any, tuple[Batch, int]] = {}
        it = iter(batches)
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and min(load.values()) < 2:
                    b = next(it, None)
                    if b is None:
                        exhausted = True
                        break
                    a = min(load, key=lambda i: (load[i], i))
                    load[a] += 1
                    pending[actors[a].run.remote(p, ctx, b)] = (b, a)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    b, a = pending.pop(ref)
                    load[a] -= 1
                    try:
                        res = ray.get(ref)
                    except Exception as exc:
                        log.error("%s: batch %s failed on a ray actor: %s", p.name, b.name, exc)
                        res = _failed(b, exc)
                    on_done(b, res)
        finally:
            for actor in actors:
                ray.kill(actor)


class BatchActor:
    """A Ray actor that runs batches in one process, so a model pass loads its model once per
    GPU (models are cached per process by their loaders) instead of once per task."""

    def run(self, p: Pass, ctx: BatchContext, batch: Batch) -> BatchResult:
        return run_batch(p, ctx, batch)

    def pid(self) -> int:
        return os.getpid()


def make_executor(engine: str, workers: int, ray_address: str | None = None) -> Executor:
    if engine == "local":
        return LocalExecutor(workers)
    if engine == "ray":
        return RayExecutor(workers, ray_address)
    raise ValueError(f"unknown engine {engine!r}; use 'local' or 'ray'")
