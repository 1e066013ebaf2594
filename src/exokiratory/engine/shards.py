"""Where the shard work of derivations runs: in this process, or as Ray tasks.

Some derivations are too big for one machine's cores (near-duplicate search over 10^8 codes,
cluster assignment, index building); their work is cut into independent shards whose outputs,
combined in shard order, are the result. The runner chooses the engine once
(``with shard_engine("ray", address): ...``, set by ``Workspace.run`` from ``--engine``) and the
algorithms call :func:`map_shards` / :func:`imap_shards`, which run ``fn(item, *shared)``:

* ``local``: in this process, one item after another (in order);
* ``ray``: one Ray task per item, at most ``max_in_flight`` at once (bounded memory), the
  ``shared`` inputs put once in the object store (each task reads them zero-copy), results
  returned in item order whatever order the tasks finish in. A failed task raises
  :class:`ShardError` with a one-line message.

The outputs are the same whatever the engine: a shard function is a pure function of its item
and the shared inputs. Ray is imported only when the ``ray`` engine is used.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
EngineName = Literal["local", "ray"]


class ShardError(RuntimeError):
    """A shard failed (its message names the shard and the cause in one line)."""


@dataclass(frozen=True)
class ShardEngine:
    """The engine for shard work: ``local`` or ``ray`` (``address``: a cluster to connect to;
    ``None``: ``RAY_ADDRESS`` if set, else a Ray instance on this machine)."""

    name: EngineName = "local"
    address: str | None = None

    @classmethod
    def named(cls, name: str, address: str | None = None) -> ShardEngine:
        """The engine called ``name`` (``local`` or ``ray``; anything else is an error)."""
        if name == "local":
            return cls("local", address)
        if name == "ray":
            return cls("ray", address)
        raise ValueError(f"unknown engine {name!r}; use 'local' or 'ray'")


_CURRENT: contextvars.ContextVar[ShardEngine | None] = contextvars.ContextVar(
    "exokiratory_shard_engine", default=None
)
_LOCAL = ShardEngine()


def current_engine() -> ShardEngine:
    """The engine set by the innermost :func:`shard_engine` (default: local)."""
    return _CURRENT.get() or _LOCAL


@contextlib.contextmanager
def shard_engine(name: str, address: str | None = None) -> Iterator[ShardEngine]:
    """Run the shard work of the enclosed code on ``name`` (``local`` or ``ray``)."""
    engine = ShardEngine.named(name, address)
    token = _CURRENT.set(engine)
    try:
        yield engine
    finally:
        _CURRENT.reset(token)


def connect_ray(address: str | None = None) -> Any:
    """The ``ray`` module, connected (to ``address``, else ``RAY_ADDRESS``, else a new local
    instance) unless this process is connected already."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("the ray engine needs Ray: pip install 'exokiratory[ray]'") from exc
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False  # a new instance on this machine
        ray.init(**kwargs)
    return ray


def parallelism() -> int:
    """Shards that run at once: 1 locally, the cluster's CPUs on Ray (to cut enough shards)."""
    engine = current_engine()
    if engine.name == "local":
        return 1
    ray = connect_ray(engine.address)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def map_shards(
    fn: Callable[..., R],
    items: Iterable[T],
    shared: tuple[Any, ...] = (),
    *,
    desc: str = "shards",
    max_in_flight: int | None = None,
) -> list[R]:
    """``[fn(item, *shared) for item in items]`` on the current engine (see the module
    docstring), results in item order."""
    return list(imap_shards(fn, items, shared, desc=desc, max_in_flight=max_in_flight))


def imap_shards(
    fn: Callable[..., R],
    items: Iterable[T],
    shared: tuple[Any, ...] = (),
    *,
    desc: str = "shards",
    max_in_flight: int | None = None,
) -> Iterator[R]:
    """Like :func:`map_shards`, yielding each result as soon as it and every earlier one are
    done (a caller merging in order holds only the results that wait for an earlier one).
    ``items`` is consumed lazily: at most ``max_in_flight`` (default: twice the cluster's
    CPUs) items are submitted and not yet yielded."""
    engine = current_engine()
    if engine.name == "local":
        for n, item in enumerate(items):
            try:
                yield fn(item, *shared)
            except Exception as exc:
                raise ShardError(_one_line(desc, n, exc)) from exc
        return
    yield from _ray_imap(connect_ray(engine.address), fn, items, shared, desc, max_in_flight)


def _ray_imap(
    ray: Any,
    fn: Callable[..., R],
    items: Iterable[T],
    shared: tuple[Any, ...],
    desc: str,
    max_in_flight: int | None,
) -> Iterator[R]:
    t0 = time.monotonic()
    limit = max_in_flight or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    refs = tuple(ray.put(x) for x in shared)  # once; every task reads the same objects
    task = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy="SPREAD")(_on_node)
    pending: deque[Any] = deque()  # refs in item order
    nodes: set[str] = set()
    n_done = 0
    it = iter(items)
    exhausted = False
    try:
        while pending or not exhausted:
            while not exhausted and len(pending) < limit:
                item = next(it, _END)
                if item is _END:
                    exhausted = True
                    break
                pending.append(task.remote(fn, item, *refs))
            if not pending:
                break
            try:
                node, result = ray.get(pending[0])
            except Exception as exc:
                raise ShardError(_one_line(desc, n_done, exc)) from exc
            pending.popleft()
            nodes.add(node)
            n_done += 1
            yield result
    finally:
        for ref in pending:  # a failure or an abandoned generator: stop the rest
            with contextlib.suppress(Exception):
                ray.cancel(ref)
    log.info(
        "%s: %d shards as Ray tasks on %d of %d node(s) in %.1fs",
        desc,
        n_done,
        len(nodes),
        sum(1 for node in ray.nodes() if node.get("Alive")),
        time.monotonic() - t0,
    )


_END = object()


def _on_node(fn: Callable[..., R], item: Any, *shared: Any) -> tuple[str, R]:
    """The task body: ``fn(item, *shared)`` and the Ray node it ran on."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(item, *shared)


def _one_line(desc: str, n: int, exc: BaseException) -> str:
    """``<desc>: shard <n> failed: <Type>: <last line>`` (a Ray task error names its cause)."""
    cause = getattr(exc, "cause", None)
    err = cause if isinstance(cause, BaseException) else exc
    text = str(err).strip().splitlines()
    return f"{desc}: shard {n} failed: {type(err).__name__}: {text[-1] if text else ''}"
