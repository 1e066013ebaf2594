"""The Python API: ``Workspace(root)`` with the same verbs as the CLI, tables as Arrow/pandas."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exokiratory.api.status import WorkspaceStatus, workspace_status
from exokiratory.core.catalog import Catalog
from exokiratory.core.compact import CompactResult, CompactRule, compact_dataset
from exokiratory.core.config import (
    ConfigError,
    RunConfig,
    ScanConfig,
    Source,
    WorkspaceConfig,
    default_workers,
    load_config,
    render_config,
)
from exokiratory.core.layout import CONFIG_FILE, DIRECTORIES, IMAGES
from exokiratory.core.storage import Storage
from exokiratory.engine import registry
from exokiratory.engine.compaction import MANIFEST_RULES, compaction_rules, pass_rule
from exokiratory.engine.derive import DeriveReport, run_derivation
from exokiratory.engine.executors import Executor, make_executor
from exokiratory.engine.run import RunReport, run_pass
from exokiratory.engine.shards import ShardEngine, imap_shards, shard_engine
from exokiratory.engine.step import BatchContext, Derivation, Pass, Resource, Step
from exokiratory.passes.scan.scanner import Scanner, ScanReport, normalise_source

if TYPE_CHECKING:
    import pandas as pd

    from exokiratory.export.shards import ExportReport
    from exokiratory.models.registry import ModelSpec
    from exokiratory.passes.embed.step import EmbedPass
    from exokiratory.passes.sample.sampler import SampleResult
    from exokiratory.passes.stop.snapshot import Recorder
    from exokiratory.passes.stop.verdict import StopResult
    from exokiratory.report import ReportResult
    from exokiratory.search.indices import IndexReport

log = logging.getLogger(__name__)


class Workspace:
    """An exokiratory workspace: a storage root holding the config and every dataset.

    >>> ws = Workspace.init("/content/drive/MyDrive/exo", sources=["/content/drive/MyDrive/photos"])
    >>> ws.scan(); ws.run(["probe"]); ws.sql("SELECT count(*) FROM images")
    """

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        self.storage = Storage(root, storage_options)
        self.config: WorkspaceConfig = load_config(self.storage)

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        root: str | os.PathLike[str],
        sources: Sequence[str | Source],
        *,
        storage_options: dict[str, Any] | None = None,
        exist_ok: bool = False,
        scan: ScanConfig | None = None,
        run: RunConfig | None = None,
    ) -> Workspace:
        """Create the layout and a commented ``exokiratory.yaml``. Existing data is never touched."""
        storage = Storage(root, storage_options)
        if storage.is_local and os.path.exists(storage.root) and not os.path.isdir(storage.root):
            raise ConfigError(f"{storage.root} is a file, not a folder: choose another workspace")
        if storage.exists(CONFIG_FILE) and not exist_ok:
            raise ConfigError(f"{storage.url} is already a workspace (it has {CONFIG_FILE})")
        cfg = WorkspaceConfig(
            sources=[s if isinstance(s, Source) else Source(path=_source_text(s)) for s in sources],
            scan=scan or ScanConfig(),
            run=run or RunConfig(),
        )
        for src in cfg.sources:
            if "://" not in src.path and not os.path.isdir(src.path):
                log.warning(
                    "source %s does not exist (yet): `scan` will fail until it does", src.path
                )
        for d in DIRECTORIES:
            storage.makedirs(d)
        from exokiratory.core.prompts import ensure_workspace_registry

        ensure_workspace_registry(storage)  # prompts/prompt_registry.yaml, for users to edit
        if not storage.exists(CONFIG_FILE):
            storage.write_bytes_atomic(CONFIG_FILE, render_config(cfg).encode("utf-8"))
        return cls(root, storage_options)

    def reload_config(self) -> WorkspaceConfig:
        self.config = load_config(self.storage)
        return self.config

    # -- passes ------------------------------------------------------------------------------
    def passes(self, names: Sequence[str] | None = None) -> list[Step[Any]]:
        """Step objects configured from ``passes.<name>`` in the config, in run order (aliases
        expanded; ``all``: every step whose :meth:`~Step.in_all` says so)."""
        known = registry.pass_names()
        wanted = registry.expand(names) if names else known
        if "all" in wanted:
            wanted = [n for n in known if self._step(n).in_all(self._configured(n))]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(
                f"unknown pass(es) {unknown}; known: {', '.join(registry.known_names())}"
            )
        steps = [self._step(n) for n in registry.run_order(wanted)]
        # derivations (and any pass with a ``bind`` hook, e.g. caption-embed, which uses the
        # embed-clip pass's model) learn the configured steps they read
        binding = [
            s for s in steps if isinstance(s, Derivation) or callable(getattr(s, "bind", None))
        ]
        if binding:
            every = self._all_steps()
            for s in binding:
                s.bind(every)  # type: ignore[attr-defined]
        return steps

    def skipped_in_all(self) -> dict[str, str]:
        """The steps ``run all`` leaves out, each with the reason."""
        out: dict[str, str] = {}
        for name in registry.pass_names():
            step = self._step(name)
            cls = registry.step_class(name)
            missing = step.missing_requirement()
            if missing is not None:
                out[name] = f"it {missing}"
            elif step.in_all(self._configured(name)):
                continue
            elif cls.resources is Resource.GPU:
                out[name] = f"a model pass: set passes.{name}.model in exokiratory.yaml to run it"
            else:
                inputs = " or ".join(cls.reads) or "its inputs"
                out[name] = f"runs once {inputs} is configured (or name it: run {name})"
        return out

    def _step(self, name: str) -> Step[Any]:
        step = registry.get_pass(name, self.config.passes.get(name))
        step.bind_workspace(self.storage.url)
        return step

    def _configured(self, name: str) -> bool:
        """Whether the config names this step or, for a step without a model of its own, a
        step it reads (clusters of a configured embedding space, statistics of configured
        segments). A model (GPU) step must be named itself: it downloads weights."""
        cls = registry.step_class(name)
        if name in self.config.passes:
            return True
        if cls.resources is Resource.GPU:
            return False
        if any(d in self.config.passes for d in cls.reads):
            return True
        # a derivation that a configured step reads (the caption selection of a caption pass)
        known = set(registry.pass_names())
        return issubclass(cls, Derivation) and any(
            name in registry.step_class(n).reads for n in self.config.passes if n in known
        )

    def _all_steps(self) -> list[Step[Any]]:
        return [self._step(n) for n in registry.pass_names()]

    def batch_context(self) -> BatchContext:
        return BatchContext(
            workspace_url=self.storage.url,
            storage_options=self.storage.storage_options,
            max_image_pixels=self.config.scan.max_image_pixels,
            source_options={
                normalise_source(s.path): s.storage_options for s in self.config.sources
            },
        )

    # -- verbs -------------------------------------------------------------------------------
    def scan(self, *, progress: bool | None = None, force: bool = False) -> ScanReport:
        """PASS 0: register new and changed files, mark vanished ones missing."""
        report = Scanner(self.storage, self.config, progress=progress, force_lock=force).run()
        self._auto_compact(MANIFEST_RULES)
        self._store_manifest_views()
        return report

    def compact(
        self,
        passes: Sequence[str] | None = None,
        *,
        target_mb: int | None = None,
        min_parts: int = 2,
    ) -> list[CompactResult]:
        """Rewrite the small parts of the manifest and of every pass output (or of ``passes``)
        as few large ones, with the same rows (kill-safe: see ``core.compact``)."""
        steps = self.passes(registry.expand(list(passes)) if passes else None)  # bound steps
        rules = compaction_rules(steps)
        if passes:  # the named passes only
            rules = [r for r in rules if r not in MANIFEST_RULES]
        target = (target_mb or self.config.run.compact_target_mb) * 1024 * 1024
        results = [
            compact_dataset(self.storage, r, target_bytes=target, min_parts=min_parts)
            for r in rules
        ]
        self._store_manifest_views()
        return results

    def _store_manifest_views(self) -> None:
        """Store the ``images`` / ``paths`` views once for the manifest as it now is (reading
        them then costs one file each: see ``core.manifest_cache``)."""
        with self.catalog(()) as cat:
            if cat.store_manifest_views():
                log.info("stored the images and paths views (%s)", cat.manifest_digest)

    def _auto_compact(self, rules: Sequence[CompactRule]) -> None:
        """After a run: compact the datasets that have many small parts (``run.compact_*``)."""
        rc = self.config.run
        if rc.compact_min_parts == 0:
            return
        for rule in rules:
            res = compact_dataset(
                self.storage,
                rule,
                target_bytes=rc.compact_target_mb * 1024 * 1024,
                min_parts=max(2, rc.compact_min_parts),
            )
            if res.parts_after != res.parts_before:
                log.info("compacted %s", res.summary())

    def run(
        self,
        passes: Sequence[str] | str = "all",
        *,
        limit: int | None = None,
        engine: str | None = None,
        workers: int | None = None,
        batch_size: int | None = None,
        retry_errors: bool = False,
        progress: bool | None = None,
        all_images: bool = False,
        ray_address: str | None = None,
    ) -> list[RunReport | DeriveReport]:
        """Run passes (names, ``"embed"`` for both embedding passes, or ``"all"``) through the
        runner; returns one report per pass. ``all_images``: passes that work on the routed
        images only (model passes) take every readable image this time. ``engine="ray"`` runs
        batches and the shard work of derivations (:mod:`exokiratory.engine.shards`) on Ray
        (``ray_address``, default: the config's ``run.ray_address``, then ``RAY_ADDRESS``)."""
        names = registry.expand([passes] if isinstance(passes, str) else passes)
        steps = self.passes(names)  # unknown names first: an error whatever the state
        if any(isinstance(s, Pass) for s in steps) and not self.storage.list_files(
            IMAGES, ".parquet"
        ):
            raise ValueError("nothing is scanned yet: run `exokiratory scan` first")
        if "all" in names:
            for name, why in self.skipped_in_all().items():
                log.info("run all: skipping %s (%s)", name, why)
        rc = self.config.run
        address = ray_address or rc.ray_address
        executor = make_executor(
            engine or rc.engine, workers or rc.workers or default_workers(), address
        )
        shards = ShardEngine.named(executor.name, address)
        reports: list[RunReport | DeriveReport] = []
        explicit = "all" not in names
        if all_images:
            for step in steps:
                step.route_all_images()
        history = self._structure_recorder()  # snapshots for `stop` after structural steps
        for p in steps:
            missing = p.missing_requirement()
            if missing is not None:
                if explicit:
                    raise RuntimeError(f"pass {p.name} {missing}")
                log.warning("skipping pass %s: it %s", p.name, missing)
                continue
            if isinstance(p, Derivation):
                reports.append(run_derivation(p, self.storage, self.catalog, shards))
                history.after(p.name, reports[-1])
                continue
            if not isinstance(p, Pass):
                raise TypeError(f"{p.name}: a step is a Pass or a Derivation")
            size = batch_size or rc.batch_size
            rep = self._run_pass(p, executor, size, limit, retry_errors, progress)
            reports.append(rep)
            history.after(p.name, rep)
        if not explicit:
            reports.extend(self._refresh_derivations(steps, reports, history, shards))
        return reports

    def _run_pass(
        self,
        p: Pass,
        executor: Executor,
        batch_size: int,
        limit: int | None,
        retry_errors: bool,
        progress: bool | None,
    ) -> RunReport:
        """One batch pass through the runner, then its compaction and model release."""
        # A model pass runs one model per process: in-process locally (torch uses every core
        # itself, and a GPU holds one copy), one GPU per task on Ray.
        ex = (
            executor
            if (p.resources is not Resource.GPU or executor.name == "ray")
            else make_executor("local", 1)
        )
        rep = run_pass(
            p,
            self.storage,
            self.batch_context(),
            ex,
            batch_size=batch_size,
            limit=limit,
            retry_errors=retry_errors,
            progress=progress,
            catalog=self.catalog,
        )
        log.debug("%s", rep.summary())
        if rep.processed:  # before the derivations that read it fingerprint its listing
            self._auto_compact([pass_rule(p)])
        if p.resources is Resource.GPU and ex.name == "local":
            release_models()
        return rep

    def _structure_recorder(self) -> Recorder:
        from exokiratory.passes.stop.snapshot import Recorder

        return Recorder(self.storage, self.catalog, self.config.passes.get("stop"))

    def _refresh_derivations(
        self,
        steps: Sequence[Step[Any]],
        reports: Sequence[RunReport | DeriveReport],
        history: Recorder | None = None,
        engine: ShardEngine | None = None,
    ) -> list[DeriveReport]:
        """Re-derive what later steps changed the inputs of (the flags read the embeddings
        that ran after them), following the registry's graph: every derivation downstream of a
        step that wrote rows, in run order; derivations skip themselves when up to date."""
        changed = {r.pass_name for r in reports if isinstance(r, RunReport) and r.processed}
        changed |= {r.name for r in reports if isinstance(r, DeriveReport) and not r.up_to_date}
        by_name = {s.name: s for s in steps if isinstance(s, Derivation)}
        out: list[DeriveReport] = []
        for name in registry.downstream_derivations(changed):
            d = by_name.get(name)
            if d is None or d.missing_requirement():
                continue
            rep = run_derivation(d, self.storage, self.catalog, engine)
            if history is not None:
                history.after(name, rep)
            if not rep.up_to_date:
                out.append(rep)
        return out

    # -- similarity --------------------------------------------------------------------------
    def build_index(
        self,
        space: str = "clip",
        kind: str = "auto",
        *,
        segments: bool = False,
        engine: str | None = None,
        ray_address: str | None = None,
    ) -> IndexReport:
        """Build or extend the FAISS index of ``space`` (clip | dino) from stored embeddings
        (of the segments, ``indices/segments-<space>.*``, with ``segments=True``). With
        ``engine="ray"`` (default: the config's ``run.engine``) an IVF index adds its vectors
        as Ray tasks over shards (the same index)."""
        from exokiratory.search.indices import build_index

        rc = self.config.run
        shards = ShardEngine.named(engine or rc.engine, ray_address or rc.ray_address)
        imap = imap_shards if shards.name == "ray" else None
        with self.catalog() as cat, shard_engine(shards.name, shards.address):
            return build_index(self.storage, cat, space, kind, segments=segments, imap=imap)

    def _embed_pass(self, space: str) -> EmbedPass:
        from exokiratory.passes.embed.step import EmbedPass

        name = f"embed-{space}"
        (p,) = self.passes([name])
        if not isinstance(p, EmbedPass):
            raise TypeError(f"{name} is not an embedding pass")
        return p

    def _segment_embed_spec(self, space: str) -> ModelSpec:
        """The model of ``segment-embed-<space>`` (segment queries must use the same one)."""
        from exokiratory.passes.segment_embed.step import SegmentEmbedPass

        (p,) = self.passes([f"segment-embed-{space}"])
        if not isinstance(p, SegmentEmbedPass):
            raise TypeError(f"segment-embed-{space} is not a segment embedding pass")
        return p.spec

    def search(
        self,
        *,
        text: str | None = None,
        image: str | None = None,
        space: str = "clip",
        k: int = 10,
        segments: bool = False,
    ) -> pd.DataFrame:
        """Nearest images to a text (CLIP only), an image id, or an image file, as a DataFrame:
        rank, score, image_id, image_idx, first_path.

        With ``segments=True``: nearest *segments* (index ``segments-<space>``), queried by a
        text, an image file (its whole-image embedding) or a ``segment_id``; columns rank,
        score, segment_id, image_id, image_idx, path, bbox (mask pixels), area_fraction.
        """
        from exokiratory.search.indices import search_vectors

        if (text is None) == (image is None):
            raise ValueError("give exactly one of text= or image=")
        if text is not None and space != "clip":
            raise ValueError("text search needs the clip space (DINOv2 has no text tower)")
        self._ensure_index(space, segments)
        query = self._query_vector(text, image, space, segments=segments)
        hits = search_vectors(self.storage, space, query, k, segments=segments)
        columns = (
            "h.segment_id, h.image_id, h.image_idx, i.first_path AS path, s.bbox, s.area_fraction"
            if segments
            else "h.image_id, h.image_idx, i.first_path"
        )
        segment_join = "LEFT JOIN segments s USING (segment_id)" if segments else ""
        with self.catalog() as cat:
            cat.con.register("_hits", hits)
            try:
                table = cat.query(
                    f"SELECT h.rank, h.score, {columns} FROM _hits h "
                    f"JOIN images i USING (image_id) {segment_join} ORDER BY h.query, h.rank"
                )
            finally:
                cat.con.unregister("_hits")
        return table.to_pandas()

    def _ensure_index(self, space: str, segments: bool) -> None:
        """Search needs stored embeddings ("run X first" otherwise, before any model loads)
        and an index: one is built on demand the first time (exact search up to 10^6)."""
        from exokiratory.search.indices import read_meta

        view = f"segment_embeddings_{space}" if segments else f"embeddings_{space}"
        step = f"segment-embed-{space}" if segments else f"embed-{space}"
        with self.catalog() as cat:
            n = view in cat.views and cat.has_ok_rows(view)
        if not n:
            raise ValueError(f"no {space} embeddings yet: run `exokiratory run {step}` first")
        if read_meta(self.storage, space, segments) is None:
            log.info("no %s index yet: building it now (`exokiratory index build`)", view)
            self.build_index(space, segments=segments)

    def similar(self, image_id: str, space: str = "clip", k: int = 10) -> pd.DataFrame:
        """Nearest images to a registered image (itself first)."""
        return self.search(image=image_id, space=space, k=k)

    def _query_vector(
        self, text: str | None, image: str | None, space: str, *, segments: bool = False
    ) -> np.ndarray:
        from exokiratory.models.vision import load_embedder
        from exokiratory.passes.embed.step import cache_dir_for

        if image is not None and not os.path.exists(image) and "://" not in image:
            # not a file: a stored id (a segment id when searching segments)
            view, key = (
                (f"segment_embeddings_{space}", "segment_id")
                if segments
                else (f"embeddings_{space}", "image_id")
            )
            with self.catalog() as cat:
                found = cat.keyed_rows(view, key, [image]) if view in cat.views else None
            rows = [] if found is None else found.filter(pc.is_null(found["error"])).to_pylist()
            if not rows:
                what = key.replace("_", " ")
                raise ValueError(
                    f"{image!r} is neither a file nor a {what} with a {space} embedding"
                )
            return np.asarray(rows[0]["embedding"], np.float32)[None, :]
        spec = self._segment_embed_spec(space) if segments else self._embed_pass(space).spec
        embedder = load_embedder(spec, cache_dir_for(self.storage.url), "auto")
        if text is not None:
            embed_texts = getattr(embedder, "embed_texts", None)
            if embed_texts is None:
                raise ValueError("this model has no text tower")
            return np.asarray(embed_texts([text]), np.float32)
        from PIL import Image, ImageOps

        with Image.open(str(image)) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
        return np.asarray(embedder.embed_pixels(embedder.preprocess(rgb)[None]), np.float32)

    def status(self) -> WorkspaceStatus:
        passes = self.passes()
        with self.catalog(passes) as cat:
            return workspace_status(cat, passes)

    def stop(self, *, record: bool = True) -> StopResult:
        """The stop condition, measured: four criteria (topology, segments, language,
        outliers) with numbers, thresholds (``passes.stop``) and states, and a verdict: stop,
        or the pass to run next and why (see :mod:`exokiratory.passes.stop`). ``record``:
        first record the current structure if it differs from the newest snapshot."""
        from exokiratory.passes.stop.verdict import measure, pending_passes

        passes = self.passes()
        with self.catalog(passes) as cat:
            pending = pending_passes(workspace_status(cat, passes))
            return measure(
                self.storage,
                self.config.passes.get("stop"),
                catalog=cat if record else None,
                pending=pending,
            )

    def report(
        self,
        name: str = "report",
        *,
        sample: int | None = None,
        progress: bool | None = None,
        **options: Any,
    ) -> ReportResult:
        """Build the static HTML diagnostics report ``reports/<name>.html`` (see
        :mod:`exokiratory.report`; ``sample``: points per embedding map; ``options``: any
        :class:`~exokiratory.report.ReportParams` field)."""
        from exokiratory.report import build_report, make_params

        params = make_params(name=name, map_sample=sample, **options)
        return build_report(self, params, status=workspace_status, progress=progress)

    # -- tables ------------------------------------------------------------------------------
    def catalog(
        self, passes: Sequence[Step[Any]] | None = None, *, read_only: bool = False
    ) -> Catalog:
        """A DuckDB catalog with a view per dataset (close it, or use it as a context manager);
        ``read_only``: queries only, and no file outside the workspace's datasets."""
        steps = self.passes() if passes is None else passes
        return Catalog(self.storage, steps, read_only=read_only)

    def sql(
        self, query: str, params: Sequence[object] | None = None, *, read_only: bool = True
    ) -> pa.Table:
        """Run SQL over the workspace's views (``?`` placeholders bound to ``params``);
        returns an Arrow table. Read-only by default: only queries (SELECT, WITH, DESCRIBE,
        SHOW, EXPLAIN) run, and they read nothing but the workspace's own datasets
        (:class:`~exokiratory.core.catalog.ReadOnlyError` otherwise)."""
        with self.catalog(read_only=read_only) as cat:
            return cat.query(query, params)

    def df(self, query: str) -> pd.DataFrame:
        """Like :meth:`sql`, as a pandas DataFrame."""
        return self.sql(query).to_pandas()

    def table(self, name: str) -> pa.Table:
        """A whole view (``images``, ``paths``, ``jobs``, or a pass name) as an Arrow table."""
        with self.catalog() as cat:
            if name not in cat.views:
                raise ValueError(f"no table {name!r}; available: {', '.join(cat.views)}")
            return cat.query(f'SELECT * FROM "{name}"')

    def images(self) -> pa.Table:
        return self.table("images")

    def paths(self) -> pa.Table:
        return self.table("paths")

    # -- samples and exports ---------------------------------------------------------------
    def sample(
        self,
        name: str,
        size: int,
        *,
        space: str = "clip",
        by: str | None = None,
        where: str | None = None,
        seed: int = 0,
        rule: str | None = None,
        include_junk: bool = False,
        include_duplicates: bool = False,
        allocation: str = "equal",
        replace: bool = False,
    ) -> SampleResult:
        """Draw a named, versioned sample (view ``samples``): ``balanced`` over the cluster
        hierarchy of ``space`` (default), ``stratified`` by a column (``by``), or ``uniform``;
        junk and non-canonical near duplicates left out unless included. Same arguments: the
        same sample; a larger ``size``: a new version keeping the earlier members (see
        :mod:`exokiratory.passes.sample.sampler`)."""
        from exokiratory.passes.sample.sampler import SampleSpec, draw_sample

        spec = SampleSpec(
            name=name,
            size=size,
            rule=rule,
            space=space,
            by=by,
            where=where,
            seed=seed,
            include_junk=include_junk,
            include_duplicates=include_duplicates,
            allocation=allocation,
        )
        with self.catalog() as cat:
            return draw_sample(self.storage, cat, spec, replace=replace)

    def export(
        self,
        dest: str,
        *,
        to: str,
        sample: str | None = None,
        where: str | None = None,
        columns: Sequence[str] = (),
        group_by: str | None = None,
        mode: str = "symlink",
        progress: bool | None = None,
        **options: Any,
    ) -> ExportReport:
        """Export a sample (``NAME`` or ``NAME@VERSION``) or the images of ``where`` to ``dest``
        (path or URL) as ``to``: manifest | files | hf | webdataset | fiftyone; resumable after a
        kill (see :mod:`exokiratory.export`; ``options``: shard_images, shard_bytes,
        dataset_name, storage_options)."""
        from exokiratory.export import export

        with self.catalog() as cat:
            return export(
                cat,
                self.batch_context(),
                dest,
                to=to,
                sample=sample,
                where=where,
                columns=columns,
                group_by=group_by,
                mode=mode,
                progress=progress,
                **options,
            )

    def __repr__(self) -> str:
        return f"Workspace({self.storage.url!r})"


def release_models() -> None:
    """Drop the models a pass loaded in this process and return CUDA memory to the driver, so
    the next pass (another model) has the whole GPU. Never imports torch itself."""
    import sys

    for name in (
        "exokiratory.models.vision",
        "exokiratory.models.sam",
        "exokiratory.models.captioner",
        "exokiratory.models.depth",
        "exokiratory.models.detect",
        "exokiratory.models.diffusion",
    ):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "clear_cache"):
            module.clear_cache()
    device = sys.modules.get("exokiratory.models.device")
    if device is not None:
        device.release_memory()


def _source_text(s: str) -> str:
    if "://" in s:
        return s
    return os.path.abspath(os.path.expanduser(s))
