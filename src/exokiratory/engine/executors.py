"""Executors run batches; they are separate from passes (one batch function, many executors).

* ``local``: in-process when ``workers == 1``, else a process pool (spawned processes, so no
  inherited thread state), with at most ``2 x workers`` batches in flight (bounded memory).
* ``ray``: the same batch function as Ray tasks (GPU passes ask for one GPU per task); the part
  files are the same, so the tables are byte-for-byte those of ``local``.

Both call ``on_done`` in the driver for every finished batch, which logs it to the jobs table.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

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


H = TypeVar("H")


def run_bounded(
    batches: Iterable[Batch],
    submit: Callable[[Batch], H],
    wait_any: Callable[[list[H]], Iterable[H]],
    finish: Callable[[H, Batch], BatchResult],
    on_done: OnDone,
    max_in_flight: int,
) -> None:
    """Submit batches while fewer than ``max_in_flight`` are running, hand each finished one
    to ``on_done`` (in the driver) as soon as ``wait_any`` reports it: bounded memory whatever
    the number of batches. ``submit`` returns a handle (a future, a Ray object ref),
    ``finish`` turns a finished handle into its result (failures included)."""
    pending: dict[H, Batch] = {}
    it = iter(batches)
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < max_in_flight:
            b = next(it, None)
            if b is None:
                exhausted = True
                break
            pending[submit(b)] = b
        if not pending:
            break
        for handle in wait_any(list(pending)):
            b = pending.pop(handle)
            on_done(b, finish(handle, b))


def die_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Worker initialiser: end this process as soon as ``parent_pid`` (the runner) is gone, so
    a killed ``run`` leaves no worker writing parts behind it. On Linux the kernel signals the
    worker when its own parent dies (``PR_SET_PDEATHSIG``; a worker's parent is the fork
    server, which exits with the runner); everywhere a daemon thread also polls the runner."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl: the thread below still watches
            pass

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # the pid was reused by another user's process
                os._exit(1)

    threading.Thread(target=watch, name="exo-parent-watch", daemon=True).start()


@contextlib.contextmanager
def workers_skip_main_script(p: Pass) -> Iterator[None]:
    """Worker processes do not re-run the user's script. Python's spawn and forkserver start
    methods import ``__main__`` from its path in every worker, so a script that calls
    ``Workspace(...).run(...)`` without an ``if __name__ == "__main__":`` guard would run again
    in each worker and break the pool. The batch code never needs the script (the steps live
    in the package), so its path is left out of what workers prepare, unless the pass itself
    was defined in the script."""
    main = sys.modules.get("__main__")
    if (
        main is None
        or getattr(main, "__spec__", None) is not None  # python -m: imported by name, guarded
        or not hasattr(main, "__file__")
        or type(p).__module__ == "__main__"
    ):
        yield
        return
    import multiprocessing.spawn as mp_spawn

    original = mp_spawn.get_preparation_data

    def without_main(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        data.pop("init_main_from_path", None)
        return data

    mp_spawn.get_preparation_data = without_main  # type: ignore[assignment]
    try:
        yield
    finally:
        mp_spawn.get_preparation_data = original  # type: ignore[assignment]


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
        return ProcessPoolExecutor(
            self.workers,
            mp_context=_worker_context(),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    def _run_pool(
        self, p: Pass, ctx: BatchContext, batches: Iterator[Batch], on_done: OnDone
    ) -> None:
        pools = [self._new_pool()]  # the current pool is the last; a broken one is replaced
        of_pool: dict[Future[BatchResult], int] = {}

        def submit(b: Batch) -> Future[BatchResult]:
            fut = pools[-1].submit(run_batch, p, ctx, b)
            of_pool[fut] = len(pools) - 1
            return fut

        def finish(fut: Future[BatchResult], b: Batch) -> BatchResult:
            generation = of_pool.pop(fut)
            try:
                return fut.result()
            except BrokenProcessPool as exc:  # every batch in flight on that pool fails
                log.error("%s: a worker process died during batch %s", p.name, b.name)
                if generation == len(pools) - 1:
                    pools[-1].shutdown(cancel_futures=True)
                    pools.append(self._new_pool())
                return _failed(b, exc)
            except Exception as exc:
                log.error("%s: batch %s failed: %s", p.name, b.name, exc)
                return _failed(b, exc)

        def wait_any(pending: list[Future[BatchResult]]) -> Iterable[Future[BatchResult]]:
            return wait(pending, return_when=FIRST_COMPLETED)[0]

        try:
            with workers_skip_main_script(p):
                run_bounded(batches, submit, wait_any, finish, on_done, 2 * self.workers)
        finally:
            pools[-1].shutdown(cancel_futures=True)


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

        run_bounded(
            batches,
            lambda b: remote.remote(p, ctx, b),
            lambda pending: ray.wait(pending, num_returns=1)[0],
            lambda ref, b: _ray_result(ray, ref, b, p.name),
            on_done,
            2 * max(1, self.workers or total_cpus),
        )

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
        on_actor: dict[Any, int] = {}

        def submit(b: Batch) -> Any:
            a = min(load, key=lambda i: (load[i], i))
            load[a] += 1
            ref = actors[a].run.remote(p, ctx, b)
            on_actor[ref] = a
            return ref

        def finish(ref: Any, b: Batch) -> BatchResult:
            load[on_actor.pop(ref)] -= 1
            return _ray_result(ray, ref, b, p.name)

        try:  # at most two batches wait per actor
            run_bounded(
                batches,
                submit,
                lambda pending: ray.wait(pending, num_returns=1)[0],
                finish,
                on_done,
                2 * n_actors,
            )
        finally:
            for actor in actors:
                ray.kill(actor)


def _ray_result(ray: Any, ref: Any, b: Batch, pass_name: str) -> BatchResult:
    try:
        result: BatchResult = ray.get(ref)
        return result
    except Exception as exc:
        log.error("%s: batch %s failed on ray: %s", pass_name, b.name, exc)
        return _failed(b, exc)


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
