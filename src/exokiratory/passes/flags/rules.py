"""Former home of the flags table, kept only for imports that still name it
(``report/histograms.py``): use :mod:`exokiratory.passes.flags.table` (the table, its
parameter model and :func:`derive_flags`) and the families' ``flag_rules`` modules instead."""

from __future__ import annotations

from exokiratory.passes.flags.table import FLAGS_SCHEMA, FlagsParams, derive_flags

__all__ = ["FLAGS_SCHEMA", "FlagsParams", "derive_flags"]
