"""Running a command in a fresh process for a benchmark: wall seconds, peak RSS, load."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any


def timed(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """Wall seconds and peak RSS (MB, ``ru_maxrss`` from ``os.wait4``) of ``cmd`` run in a
    fresh process, the 1-minute load average before and after, and its output."""
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{out[-3000:]}")
    return {
        "wall_s": round(time.perf_counter() - t, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "output": out,
    }
