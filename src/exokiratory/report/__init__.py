"""``exokiratory report``: a static, self-contained HTML diagnostics report in ``reports/``.

It discovers every table of the workspace (catalog views) and renders a section for each:
special sections where the data exists (overview, stop-condition panel, PASS 1 distributions with
the flag thresholds, galleries, embedding maps, cluster exemplars, motif sheets), "not computed
yet: run X" where it does not, and a generic summary (rows, one line per column) for every table,
so the report grows as passes are added. Thumbnails are cached in ``reports/thumbs/`` (made by the
runner, only the missing ones). Modules: :mod:`.tables` (discovery, summaries), :mod:`.overview`,
:mod:`.histograms`, :mod:`.galleries`, :mod:`.maps` (sampling, projection), :mod:`.stopping`
(stop-condition metrics and history snapshots), :mod:`.thumbs`, :mod:`.render`, :mod:`.build`.
"""

from __future__ import annotations

from exokiratory.report.build import ReportResult, build_report
from exokiratory.report.params import ReportParams, make_params

__all__ = ["ReportParams", "ReportResult", "build_report", "make_params"]
