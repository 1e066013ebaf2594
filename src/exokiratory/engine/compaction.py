"""Which datasets a workspace compacts, and by which reader rule (see :mod:`core.compact`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exokiratory.core.compact import (
    MIN_PARTS,
    TARGET_BYTES,
    CompactResult,
    CompactRule,
    compact_dataset,
)
from exokiratory.core.dataset import ORIGIN
from exokiratory.core.layout import IMAGES, PATHS
from exokiratory.core.manifest import PATHS_KEY
from exokiratory.core.storage import Storage
from exokiratory.engine.step import Pass, Step

#: the manifest's own rules: the image registry keeps the first registration of an image, the
#: path log the first sighting of a (path, size, mtime, image, status) state
MANIFEST_RULES = (
    CompactRule(IMAGES, ("image_id",), f"image_idx, {ORIGIN}"),
    CompactRule(PATHS, PATHS_KEY, f"seen_at, {ORIGIN}"),
)


def pass_rule(p: Pass[Any]) -> CompactRule:
    """A pass output's rule: one row per key, a row without error first, then the last part."""
    return CompactRule.keyed(p.output_rel, p.key, "error" in p.output_schema().names)


def compaction_rules(steps: Sequence[Step[Any]]) -> list[CompactRule]:
    """The manifest and the current output of every pass among ``steps``."""
    rules = list(MANIFEST_RULES)
    seen = {r.rel for r in rules}
    for s in steps:
        if isinstance(s, Pass) and s.output_rel not in seen:
            rules.append(pass_rule(s))
            seen.add(s.output_rel)
    return rules


def compact_all(
    storage: Storage,
    steps: Sequence[Step[Any]],
    *,
    target_bytes: int = TARGET_BYTES,
    min_parts: int = MIN_PARTS,
) -> list[CompactResult]:
    """Compact every dataset of ``steps`` (and the manifest) that has enough small parts."""
    return [
        compact_dataset(storage, rule, target_bytes=target_bytes, min_parts=min_parts)
        for rule in compaction_rules(steps)
    ]
