"""``exokiratory report``: a static, self-contained HTML diagnostics report in ``reports/``.

The page is assembled from the section registry (:mod:`exokiratory.engine.sections`): the
report's own sections (:mod:`.sections`: the overview, the galleries frame, every table) and
those the pass families contribute from their ``section`` modules (distributions and flag
galleries, embedding maps, cluster exemplars and outliers, motif sheets, the stop-condition
panel of :mod:`exokiratory.passes.stop`). Each section gathers its data from the catalog views, says "not computed yet: run X"
where there is none, and is rendered by its jinja2 template; every table gets a generic summary
(rows, one line per column), so the report grows as passes are added. Thumbnails are cached in
``reports/thumbs/`` (made by the runner, only the missing ones). Modules: :mod:`.build`
(gather, thumbnails, render, write), :mod:`.overview`, :mod:`.thumbs`, :mod:`.render` (jinja2 environment, filters),
:mod:`.charts` (histogram SVG geometry), ``templates/`` (page shell, shared macros).
"""

from __future__ import annotations

from exokiratory.report.build import ReportResult, build_report
from exokiratory.report.params import ReportParams, make_params

__all__ = ["ReportParams", "ReportResult", "build_report", "make_params"]
