"""Named, versioned samples: where they are stored and the catalog views over them.

A sample is a user-invoked, deterministic selection of images (see
:mod:`exokiratory.passes.sample`). Each version of sample ``<name>`` is three Parquet files, each
written whole (atomically) once::

    samples/<name>/members/v000001.parquet     one row per member image (SAMPLES_SCHEMA)
    samples/<name>/strata/v000001.parquet      per grouping and stratum: population vs sample
    samples/<name>/distances/v000001.parquet   per grouping: TV / KL distances of the sample

Views (defined only when some sample exists): ``samples`` (every version of every sample),
``samples_current`` (the newest version of each sample), ``samples_strata`` and
``samples_distances``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pyarrow as pa

from exokiratory.core.storage import Storage

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

SAMPLES = "samples"
MEMBERS, STRATA, DISTANCES = "members", "strata", "distances"

SAMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_VERSION_FILE = re.compile(r"^v(\d{6})\.parquet$")

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("sample", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("rank", pa.int64(), nullable=False),  # 0-based draw order: a prefix is a sample
        pa.field("stratum", pa.string()),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("params", pa.string(), nullable=False),  # every argument, as JSON
    ]
)

STRATA_SCHEMA = pa.schema(
    [
        pa.field("sample", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("grouping", pa.string(), nullable=False),  # "clip level 1", "modality"...
        pa.field("stratum", pa.string()),
        pa.field("population", pa.int64()),
        pa.field("sampled", pa.int64()),
    ]
)

DISTANCES_SCHEMA = pa.schema(
    [
        pa.field("sample", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("grouping", pa.string(), nullable=False),
        pa.field("n_strata", pa.int64()),
        pa.field("tv_sample_uniform", pa.float64()),
        pa.field("tv_population_uniform", pa.float64()),
        pa.field("tv_sample_population", pa.float64()),
        pa.field("kl_sample_uniform", pa.float64()),
        pa.field("kl_sample_population", pa.float64()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    MEMBERS: SAMPLES_SCHEMA,
    STRATA: STRATA_SCHEMA,
    DISTANCES: DISTANCES_SCHEMA,
}


def check_sample_name(name: str) -> str:
    if not SAMPLE_NAME.match(name):
        raise ValueError(
            f"bad sample name {name!r}: letters, digits, '_', '.', '-' (not first), at most 100"
        )
    return name


def sample_file(name: str, table: str, version: int) -> str:
    """Relative path of one table of one version of a sample."""
    return f"{SAMPLES}/{check_sample_name(name)}/{table}/v{version:06d}.parquet"


def sample_versions(storage: Storage, name: str) -> list[int]:
    """Committed versions of a sample (those whose members file exists), ascending."""
    out = []
    for rel in storage.list_files(f"{SAMPLES}/{check_sample_name(name)}/{MEMBERS}", ".parquet"):
        m = _VERSION_FILE.match(rel.rsplit("/", 1)[-1])
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def sample_names(storage: Storage) -> list[str]:
    return [n for n in storage.listdir(SAMPLES) if SAMPLE_NAME.match(n)]


def _files(storage: Storage, table: str) -> list[str]:
    rels = [
        f"{SAMPLES}/{n}/{table}/{f.rsplit('/', 1)[-1]}"
        for n in sample_names(storage)
        for f in storage.list_files(f"{SAMPLES}/{n}/{table}", ".parquet")
        if _VERSION_FILE.match(f.rsplit("/", 1)[-1])
    ]
    if storage.is_local:
        return [storage.path(r) for r in rels]
    return [storage.fs.unstrip_protocol(storage.path(r)) for r in rels]


def define_sample_views(catalog: Catalog) -> None:
    """The ``samples*`` views, when at least one sample has been written."""
    members = _files(catalog.storage, MEMBERS)
    if not members:
        return
    views = (("samples", MEMBERS), ("samples_strata", STRATA), ("samples_distances", DISTANCES))
    for view, table in views:
        files = members if table == MEMBERS else _files(catalog.storage, table)
        _define(catalog, view, files, TABLES[table])
    catalog.define_view(
        "samples_current",
        "SELECT s.* FROM samples s JOIN (SELECT sample, max(version) AS version FROM samples "
        "GROUP BY sample) USING (sample, version) ORDER BY sample, rank",
    )


def _define(catalog: Catalog, view: str, files: list[str], schema: pa.Schema) -> None:
    order = "sample, version, rank" if "rank" in schema.names else "sample, version"
    if files:
        quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        src = f"read_parquet([{quoted}], union_by_name=true)"
    else:
        src = f"_empty_{view}"
        catalog.con.register(src, schema.empty_table())
    catalog.define_view(view, f"SELECT * FROM {src} ORDER BY {order}")
