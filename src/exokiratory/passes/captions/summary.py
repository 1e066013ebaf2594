"""What ``status``, the demo and the report say about captions: selected units, and captions
per pass, model and prompt version (random-weight models named as such)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

RANDOM_WEIGHT_NOTE = "RANDOM-WEIGHT model: its captions are gibberish (plumbing only)"

SUMMARY_SQL = """
SELECT caption_pass, model_id, prompt_id, prompt_version,
       bool_or(coalesce(is_random_weights, false)) AS is_random_weights,
       count(*) FILTER (WHERE error IS NULL) AS captioned,
       count(*) FILTER (WHERE error IS NOT NULL) AS errors,
       count(*) FILTER (WHERE error IS NULL AND unit_id IN (SELECT unit_id FROM caption_selection))
         AS captioned_selected,
       avg(clip_score)::DOUBLE AS mean_clip_score
FROM captions GROUP BY ALL ORDER BY caption_pass, model_id, prompt_id, prompt_version
"""


def caption_summary(cat: Catalog) -> dict[str, Any]:
    """``{"selected": n, "selected_by_kind": {...}, "models": [row per pass, model and
    prompt version]}``; empty when no selection exists."""
    if "caption_selection" not in cat.views:
        return {}
    by_kind = {
        str(k): int(n)
        for k, n in cat.rows(
            "SELECT unit_kind, count(*) FROM caption_selection GROUP BY 1 ORDER BY 1"
        )
    }
    models = cat.query(SUMMARY_SQL).to_pylist() if "captions" in cat.views else []
    if not by_kind and not models:
        return {}
    return {"selected": sum(by_kind.values()), "selected_by_kind": by_kind, "models": models}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`caption_summary` (random-weight models said so)."""
    if not summary:
        return []
    kinds = ", ".join(f"{n} {k}s" for k, n in summary["selected_by_kind"].items())
    lines = [f"captions: {summary['selected']} units selected ({kinds or 'none'})"]
    for m in summary["models"]:
        score = m["mean_clip_score"]
        line = (
            f"  {m['caption_pass']} {m['model_id']} ({m['prompt_id']}@{m['prompt_version']}): "
            f"{m['captioned']} captioned ({m['captioned_selected']} of the selected), "
            f"{m['errors']} errors, mean clip_score " + ("n/a" if score is None else f"{score:.3f}")
        )
        if m["is_random_weights"]:
            line += f"; {RANDOM_WEIGHT_NOTE}"
        lines.append(line)
    return lines
