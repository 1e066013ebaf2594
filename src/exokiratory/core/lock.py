"""A lease lock file in the workspace, so that two kernels never scan at the same time.

The lock records host, pid and a heartbeat that a background thread refreshes. A lock is stale
(and is taken over) when its process is dead on this host, or when its heartbeat is older than
the TTL. Creation is atomic on local file systems (``O_EXCL``, also on a mounted Drive) and best
effort on object stores (check, then put).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass

from exokiratory.core.storage import Storage


class LockHeld(RuntimeError):
    """Another live process holds the lock."""


@dataclass
class LockInfo:
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseLock:
    def __init__(self, storage: Storage, rel: str, ttl_seconds: float, what: str = "scan"):
        self.storage = storage
        self.rel = rel
        self.ttl = ttl_seconds
        self.what = what
        self.info: LockInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> LockInfo | None:
        try:
            return LockInfo(**json.loads(self.storage.read_bytes(self.rel)))
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    def _is_stale(self, other: LockInfo) -> bool:
        if other.host == socket.gethostname() and not _pid_alive(other.pid):
            return True
        return time.time() - other.heartbeat > self.ttl

    def acquire(self, force: bool = False) -> None:
        now = time.time()
        me = LockInfo(socket.gethostname(), os.getpid(), now, now, os.urandom(8).hex())
        for _ in range(3):
            if self.storage.create_exclusive(self.rel, me.to_bytes()):
                self.info = me
                self._start_heartbeat()
                return
            other = self._read()
            if other is None or force or self._is_stale(other):
                self.storage.remove(self.rel)
                continue
            age = time.time() - other.heartbeat
            raise LockHeld(
                f"another {self.what} is running on this workspace (host {other.host}, pid "
                f"{other.pid}, heartbeat {age:.0f}s ago). Wait for it, or if it is dead, wait "
                f"{max(0.0, self.ttl - age):.0f}s for the lock to go stale or pass --force."
            )
        raise LockHeld(f"could not take the {self.what} lock at {self.rel}")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="exo-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl / 4)):
            if self.info is None:
                return
            current = self._read()
            if current is None or current.token != self.info.token:
                return  # someone forced us out; stop refreshing
            self.info.heartbeat = time.time()
            self.storage.write_bytes_atomic(self.rel, self.info.to_bytes())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self._read()
        if self.info is not None and current is not None and current.token == self.info.token:
            self.storage.remove(self.rel)
        self.info = None

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
