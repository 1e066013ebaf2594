"""Bounded, in-order concurrency helpers used by passes that read or decode ahead of a model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_results(
    submit: Callable[[T], Future[R]],
    items: Iterable[T],
    ahead: int,
    on_all_submitted: Callable[[], None] | None = None,
) -> Iterator[R]:
    """The results of ``submit(item)`` for each item, in order, with at most ``ahead`` submitted
    and not yet consumed (bounded memory, unlike ``Executor.map``); ``on_all_submitted`` runs
    once the last item is submitted (to queue follow-up work behind it)."""
    pending: deque[Future[R]] = deque()
    it = iter(items)
    done_submitting = False
    while True:
        while not done_submitting and len(pending) < ahead:
            item = next(it, _END)
            if item is _END:
                done_submitting = True
                if on_all_submitted is not None:
                    on_all_submitted()
                break
            pending.append(submit(item))  # type: ignore[arg-type]
        if not pending:
            return
        yield pending.popleft().result()


_END = object()


def in_threads(fn: Callable[[T], R], items: Sequence[T], threads: int) -> Iterator[R]:
    """``fn`` of each item, in order, computed by ``threads`` (>= 1) threads at most
    ``2 x threads`` items ahead of the consumer; a single item is computed in the caller's
    thread."""
    if len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="exo-read") as pool:
        yield from ordered_results(lambda item: pool.submit(fn, item), items, 2 * threads)
