"""passes/stop: the stop condition, measured (``exokiratory stop``, ``Workspace.stop()``, the
report's "When to move on" panel: one function, :func:`exokiratory.passes.stop.verdict.measure`).

* :mod:`.snapshot` builds a small snapshot of the structure (cluster ids per space and level,
  motif ids, top-q outlier sets, bootstrap stability of the clusters, caption vocabulary and
  the PCA basis of the caption embeddings) from the catalog;
* :mod:`.history` stores the snapshots (one atomic Parquet part each, ``history/structure/``),
  records one after every pass or derivation that changed structure, and reads them back;
* :mod:`.topology`, :mod:`.segments`, :mod:`.language`, :mod:`.outliers`: the four criteria,
  each a pure function of the history and :class:`.base.StopParams`;
* :mod:`.verdict`: stop, or continue naming the pass to run and why;
* :mod:`.section` (+ ``stop.html.j2``): the report panel, built on the same function.
"""
