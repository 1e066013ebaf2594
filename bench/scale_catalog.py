"""Scale benchmark of the reading side: catalog open, `sql count(*)`, planning a pass with
nothing to do and `status`, on a synthetic workspace of N images with parts at the default batch
sizes (manifest 2000 per part, PASS 1 outputs 256 per part), before and after `compact`.

    python bench/scale_catalog.py --images 100000 [--images 1000000] [--keep DIR]

Each measurement runs in a fresh Python process: the time of the operation itself, after the
imports of the package and of every pass family (printed apart: paid once per command whatever
the collection's size), and the peak RSS of that process. The synthetic rows have the real schemas of the manifest, `probe`
and `sense`, filled with random values of the right types.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exokiratory.api.workspace import Workspace
from exokiratory.core.dataset import PartDataset
from exokiratory.core.layout import IMAGES, PATHS
from exokiratory.core.manifest import IMAGES_SCHEMA, PATHS_SCHEMA

MANIFEST_BATCH = 2000
PASS_BATCH = 256


def _column(
    field: pa.Field, n: int, start: int, rng: np.random.Generator, images: bool = False
) -> pa.Array:
    t = field.type
    name = field.name
    if name == "image_id":
        return _lpad_ints(np.arange(start, start + n), 32, hexa=True).cast(t)
    if name == "image_idx":
        return pa.array(np.arange(start, start + n), t)
    if name == "error":
        return pa.nulls(n, t)
    if name == "status":  # a readable image; a path that is an image
        return pa.array(["ok" if images else "image"] * n, t)
    if name in ("path", "first_path"):  # /data/img/00001/000001234.jpg
        i = np.arange(start, start + n)
        parts = [_lpad_ints(i // 1000, 5), _lpad_ints(i, 9)]
        name = pc.binary_join_element_wise(parts[1], ".jpg", "")
        return pc.binary_join_element_wise("/data/img", parts[0], name, "/")
    if pa.types.is_boolean(t):
        return pa.array(rng.random(n) < 0.1)
    if pa.types.is_integer(t):
        return pa.array(rng.integers(0, 1000, n), t)
    if pa.types.is_floating(t):
        return pa.array(rng.random(n).astype(np.float32)).cast(t)
    if pa.types.is_timestamp(t):
        return pa.array(np.full(n, 1_700_000_000_000_000, "int64")).cast(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.array([f"s{v}" for v in rng.integers(0, 50, n)], t)
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        size = t.list_size if pa.types.is_fixed_size_list(t) else 16
        vals = _column(pa.field("v", t.value_type), n * size, 0, rng)
        if pa.types.is_fixed_size_list(t):
            return pa.FixedSizeListArray.from_arrays(vals, size)
        return pa.ListArray.from_arrays(pa.array(np.arange(0, n * size + 1, size, "int32")), vals)
    if pa.types.is_binary(t):
        return pa.array([b"\0" * 8] * n, t)
    return pa.nulls(n, t)


def _lpad_ints(values: np.ndarray, width: int, hexa: bool = False) -> pa.Array:
    """Zero-padded decimal (or hexadecimal) strings of ``values``, vectorised (10^7 rows)."""
    if hexa:  # 16 hex digits of the value, left-padded with zeros to ``width``
        raw = values.astype(">u8").view(np.uint8).reshape(-1, 8)
        digits = np.frombuffer(b"0123456789abcdef", np.uint8)
        chars = np.stack([digits[raw >> 4], digits[raw & 15]], axis=2).reshape(-1, 16)
        text = pa.array(chars.view("S16").ravel()).cast(pa.string())
    else:
        text = pa.array(values).cast(pa.string())
    return pc.utf8_lpad(text, width=width, padding="0")


#: column overrides of the pass tables: name -> fn(start, n) giving that slice of the column
Overrides = Mapping[str, Callable[[int, int], pa.Array]]


def _table(
    schema: pa.Schema,
    n: int,
    start: int,
    rng: np.random.Generator,
    overrides: Overrides | None = None,
) -> pa.Table:
    images = schema is IMAGES_SCHEMA
    cols = {f.name: _column(f, n, start, rng, images) for f in schema}
    for name, make in (overrides or {}).items():
        if name in cols:
            cols[name] = make(start, n).cast(schema.field(name).type)
    return pa.table(cols, schema=schema)


def build(
    root: Path,
    n: int,
    overrides: Overrides | None = None,
    *,
    manifest_rows: int = MANIFEST_BATCH,
    pass_rows: int = PASS_BATCH,
) -> Workspace:
    """The synthetic workspace; ``overrides`` replaces columns of the `probe` and `sense`
    tables (e.g. hashes with planted near copies, bench/flags_scale.py)."""
    src = root / "images"
    src.mkdir(parents=True)
    ws = Workspace.init(root / "ws", [str(src)])
    rng = np.random.default_rng(0)
    for start in range(0, n, manifest_rows):
        m = min(manifest_rows, n - start)
        ws.storage.write_parquet_atomic(
            f"{IMAGES}/part-{start:012d}.parquet", _table(IMAGES_SCHEMA, m, start, rng)
        )
        ws.storage.write_parquet_atomic(
            f"{PATHS}/part-{start:012d}.parquet", _table(PATHS_SCHEMA, m, start, rng)
        )
    for name in ("probe", "sense"):
        (p,) = ws.passes([name])
        ds = PartDataset(ws.storage, p.output_rel, p.key)  # type: ignore[attr-defined]
        schema = p.output_schema()
        for start in range(0, n, pass_rows):
            m = min(pass_rows, n - start)
            ds.write_part(f"part-{start:012d}", _table(schema, m, start, rng, overrides))
    return ws


_PROBE = """
import json, resource, sys, time
from exokiratory.api.workspace import Workspace
from exokiratory.engine.planner import plan
t = time.perf_counter()
ws = Workspace(sys.argv[1]); op = sys.argv[2]
ws.passes()  # imports every pass family (paid once per command, whatever the size)
imports = time.perf_counter() - t
t = time.perf_counter()
if op == "open":
    ws.catalog().close()
elif op == "count":
    ws.sql("SELECT count(*) FROM images")
elif op == "count_features":
    ws.sql("SELECT count(*) FROM features")
elif op == "plan":
    (p,) = ws.passes(["sense"])
    with ws.catalog(ws.passes()) as cat:
        pl = plan(p, cat, batch_size=256)
    assert pl.todo.num_rows == 0 and pl.done == pl.wanted > 0, (pl.wanted, pl.done)
elif op == "status":
    st = ws.status()
    sense = [p for p in st.passes if p.name == "sense"][0]
    assert sense.done == sense.wanted > 0, (sense.done, sense.wanted)
elif op == "compact":
    ws.compact()
s = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"s": s, "imports": imports, "rss_mb": rss}))
"""

OPS = ("open", "count", "count_features", "plan", "status")


def measure(ws_root: str, op: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, ws_root, op], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def parquet_opens(ws_root: str, op: str) -> int | None:
    """Parquet files opened by the whole command (``strace -f -e openat``), or None without
    strace. Counts every successful open, so a file opened twice counts twice."""
    if not shutil.which("strace"):
        return None
    with tempfile.NamedTemporaryFile(suffix=".strace") as trace:
        cmd = ["strace", "-f", "-qq", "-e", "trace=openat", "-o", trace.name]
        subprocess.run(
            [*cmd, sys.executable, "-c", _PROBE, ws_root, op],
            check=True,
            capture_output=True,
        )
        lines = Path(trace.name).read_text().splitlines()
    return sum(1 for ln in lines if ".parquet" in ln and "= -1 " not in ln)


def parts(ws: Workspace) -> int:
    return sum(1 for _ in ws.storage.walk_files("", ".parquet"))


def _table_rows(rows: dict[str, list[dict[str, float]]], opens: dict[str, int | None]) -> None:
    """One markdown row per operation: (before,) after compaction, and the files it opened."""
    before = all(len(v) == 2 for v in rows.values())
    head = "| operation | before (s, peak MB) " if before else "| operation "
    print(head + "| after compact (s, peak MB) | parquet opens |")
    print("|---" * (4 if before else 3) + "|")
    for op, runs in rows.items():
        a, b = runs[0], runs[-1]
        first = f"| {op} | {a['s']:.2f}, {a['rss_mb']:.0f} " if before else f"| {op} "
        print(first + f"| {b['s']:.2f}, {b['rss_mb']:.0f} | {opens.get(op)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, action="append")
    ap.add_argument("--keep", type=Path, help="build under this folder and keep it")
    ap.add_argument("--manifest-rows", type=int, default=MANIFEST_BATCH, help="rows per part")
    ap.add_argument("--pass-rows", type=int, default=PASS_BATCH, help="rows per pass part")
    ap.add_argument("--after-only", action="store_true", help="measure after compact only")
    args = ap.parse_args()
    for n in args.images or [100_000]:
        root = Path(tempfile.mkdtemp(dir=args.keep)) if args.keep else Path(tempfile.mkdtemp())
        try:
            t = time.perf_counter()
            ws = build(root, n, manifest_rows=args.manifest_rows, pass_rows=args.pass_rows)
            print(f"## {n:,} images: built in {time.perf_counter() - t:.1f} s, {parts(ws)} parts")
            rows: dict[str, list[dict[str, float]]] = {op: [] for op in OPS}
            if not args.after_only:
                for op in OPS:
                    rows[op].append(measure(ws.storage.root, op))
            c = measure(ws.storage.root, "compact")
            print(f"compact: {c['s']:.1f} s, peak {c['rss_mb']:.0f} MB -> {parts(ws)} parts")
            for op in OPS:
                rows[op].append(measure(ws.storage.root, op))
            opens = {op: parquet_opens(ws.storage.root, op) for op in OPS}
            imports = sum(r["imports"] for v in rows.values() for r in v) / sum(
                map(len, rows.values())
            )
            print(f"(imports of the package and every pass family, per command: {imports:.2f} s)")
            _table_rows(rows, opens)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
