"""The flags table (PASS 2): routing flags composed of every registered flag rule.

Flags are derived from stored outputs, never from pixels: each pass family contributes blocks
of ``is_*`` flags next to the ``*_score`` they were cut from (a :class:`FlagRule` in its
``flag_rules`` module, see :mod:`exokiratory.engine.flag_rules`); the thresholds are the
fields of ``passes.flags`` in the workspace config (:data:`FlagsParams`, composed of the rules'
fragments) and are recorded in every row (``flags_params``). The rules, in table order:

* ``corrupt`` (:mod:`exokiratory.passes.probe.flag_rules`): ``is_corrupt``, ``corrupt_reason``;
* ``dark_light``, ``blurry``, ``low_information``, ``grayscale``, ``geometry``, ``outlier``
  (:mod:`exokiratory.passes.sense.flag_rules`): image-quality flags from PASS 1 signals;
* ``text_heavy``, ``semantic`` (:mod:`exokiratory.passes.cues.flag_rules`): text-heavy,
  modality, human present, dense scene, from PASS 1, the cues and the zero-shot probabilities;
* ``exact_duplicates`` (:mod:`exokiratory.passes.scan.flag_rules`): ``n_paths``;
* ``near_duplicates`` (:mod:`exokiratory.passes.flags.flag_rules`): perceptual-hash groups;
* ``semantic_duplicates``, ``embedding_outliers`` (:mod:`exokiratory.passes.embed.flag_rules`);
* ``junk`` (sense) and ``worth_gpu`` (flags): ``is_junk``, ``is_worth_gpu``. The
  ``images_routed`` view holds the images worth GPU time.

Rows that were not sensed (no PASS 1 signals) get null scores and False flags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from exokiratory.engine.flag_rules import (
    FlagFrame,
    FlagRule,
    compose_params,
    compute_order,
    flag_rules,
    table_order,
)
from exokiratory.engine.step import PassParams
from exokiratory.passes.flags.inputs import sensed_rows

KEY_FIELDS: tuple[pa.Field, ...] = (
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image_idx", pa.int64(), nullable=False),
)
PROVENANCE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("flags_version", pa.string()),
    pa.field("flags_params", pa.string()),
)


def flags_schema(rules: Sequence[FlagRule]) -> pa.Schema:
    """Key columns, every rule's block in table order, provenance columns."""
    return pa.schema([*KEY_FIELDS, *table_order(rules), *PROVENANCE_FIELDS])


#: the parameter model of ``passes.flags``: every registered rule's fragment
FlagsParams: type[PassParams] = compose_params(flag_rules(), "FlagsParams", __name__)
#: the flags table of the registered rules
FLAGS_SCHEMA = flags_schema(flag_rules())


def derive_flags(
    t: pa.Table,
    p: PassParams,
    version: str,
    inputs: Mapping[str, Any] | None = None,
    rules: Sequence[FlagRule] | None = None,
    dictionary_provenance: bool = False,
) -> pa.Table:
    """Flags for every registered image, from the joined input table (:func:`.inputs.flags_input_sql`)
    and the rules' side inputs (``inputs``; a rule gets None for one that is absent).
    ``rules``: another rule set than the registered one (tests, experiments).
    ``dictionary_provenance``: ``flags_version`` and ``flags_params`` dictionary-encoded (one
    string each, not one copy per row: the parameters are ~1 KB, so 1 GB at 10^6 rows); the
    engine casts them to the schema's strings a slice at a time while writing
    (:func:`exokiratory.engine.derive._write_table`), so the stored table is the same."""
    rules = flag_rules() if rules is None else compute_order(rules)
    frame = FlagFrame(t, sensed_rows(t), dict(inputs or {}))
    for rule in rules:
        frame.columns.update(rule.run(frame, p))
    params = json.dumps(p.model_dump(mode="json"), sort_keys=True)
    schema = flags_schema(rules)
    cols = {
        "image_id": t.column("image_id"),
        "image_idx": t.column("image_idx"),
        **{f.name: _to_arrow(frame.columns.pop(f.name), f) for f in table_order(rules)},
        "flags_version": _constant(version, t.num_rows, dictionary_provenance),
        "flags_params": _constant(params, t.num_rows, dictionary_provenance),
    }
    if dictionary_provenance:
        for name in ("flags_version", "flags_params"):
            i = schema.get_field_index(name)
            schema = schema.set(i, schema.field(i).with_type(cols[name].type))
    return pa.table(cols, schema=schema)


def _constant(value: str, n: int, dictionary: bool) -> pa.Array:
    """``value`` on ``n`` rows: plain strings, or a dictionary of one string."""
    if dictionary:
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _to_arrow(values: Any, f: pa.Field) -> Any:
    """A rule's float numpy column cast to its field's type, NaN as null; others as they are."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f" and pa.types.is_floating(f.type):
        x = np.where(np.isfinite(values), values, np.nan).astype(f.type.to_pandas_dtype())
        return pa.array(x, f.type, from_pandas=True)
    return values
