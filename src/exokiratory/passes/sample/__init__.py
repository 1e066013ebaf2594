"""passes/sample: named, deterministic, versioned samples (balanced, stratified, uniform).

Not a pass of ``run``: a sample is drawn on request (``exokiratory sample NAME``) from stored
tables and written by :mod:`exokiratory.passes.sample.sampler` under ``samples/<name>/``
(layout and views: :mod:`exokiratory.core.samples`).
"""
