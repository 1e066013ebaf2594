"""Flag rules of the ``cues`` family (with the ``zeroshot`` probabilities when they exist):
text-heavy, modality, human present and dense scene.

The formulas are in :mod:`exokiratory.passes.flags.semantic` (pure functions shared by both
rules and by ``bench/semantic_flags_agreement.py``); the thresholds are
:class:`~exokiratory.passes.flags.semantic.SemanticFlagsParams` fields of ``passes.flags``.
Without cues and zero-shot rows, ``is_text_heavy`` is the PASS 1 rule
``text_likeness_score >= text_heavy_threshold``. Every score is "higher = more of the named
thing" (``modality_*_score`` sum to 1 over the three modalities).
"""

from __future__ import annotations

import pyarrow as pa

from exokiratory.engine.flag_rules import Columns, FlagFrame, FlagInput, FlagSource, flag_rule
from exokiratory.passes.flags.semantic import (
    PASS1_COLUMNS,
    SEMANTIC_FIELDS,
    SemanticFlagsParams,
    in_slices,
    semantic_columns,
    semantic_inputs_sql,
    text_heavy_columns,
)


def _semantic_inputs(source: FlagSource) -> pa.Table | None:
    """Cue and zero-shot columns aligned with the rows, from the views that exist."""
    sql = semantic_inputs_sql(source.catalog.views)
    return source.aligned(sql) if sql else None


SEMANTIC_INPUTS = FlagInput("semantic", _semantic_inputs)


@flag_rule(
    "text_heavy",
    [pa.field("text_heavy_score", pa.float32()), pa.field("is_text_heavy", pa.bool_())],
    order=30,
    params=SemanticFlagsParams,
    features=PASS1_COLUMNS,
    inputs=(SEMANTIC_INPUTS,),
    reads=("cues",),
    optional_reads=("zeroshot",),
)
def text_heavy(frame: FlagFrame, p: SemanticFlagsParams) -> Columns:
    """Pages of text, screenshots of documents: PASS 1 text likeness, detected text area,
    zero-shot ``text_heavy``."""
    return in_slices((text_heavy_columns,), frame.table, frame.input("semantic"), p, frame.sensed)


@flag_rule(
    "semantic",
    SEMANTIC_FIELDS,
    order=50,
    params=SemanticFlagsParams,
    features=PASS1_COLUMNS,
    inputs=(SEMANTIC_INPUTS,),
    reads=("cues",),
    optional_reads=("zeroshot",),
)
def semantic(frame: FlagFrame, p: SemanticFlagsParams) -> Columns:
    """Modality (photo / scan / graphic), human present, dense scene, and which evidence the
    row used (``semantic_inputs``)."""
    return in_slices((semantic_columns,), frame.table, frame.input("semantic"), p, frame.sensed)
