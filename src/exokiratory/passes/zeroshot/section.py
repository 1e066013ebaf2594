"""What the report reads from the zero-shot scores (no page section of its own).

The zero-shot labels colour the embedding maps (:mod:`exokiratory.passes.embed.section`) and,
through :func:`modality_sql`, give the modality of the overview and of the strata gallery when no
pass wrote a ``modality`` column.
"""

from __future__ import annotations

from exokiratory.core.tables import Tables, qi

#: Columns that hold a modality label, in order of preference.
MODALITY_COLUMNS = ("modality",)


def zeroshot_view(tables: Tables) -> str | None:
    """A long-format zero-shot table (image_id, group_id, class_id, prob), if any."""
    return tables.find_with("image_id", "group_id", "class_id", "prob", prefer=("zeroshot",))


def zeroshot_groups(tables: Tables) -> list[str]:
    """The zero-shot groups (queried once per build)."""
    view = zeroshot_view(tables)
    if view is None:
        return []
    return tables.memo(
        f"zeroshot_groups:{view}",
        lambda: [
            str(r[0])
            for r in tables.cat.rows(f"SELECT DISTINCT group_id FROM {qi(view)} ORDER BY 1")
        ],
    )


def zeroshot_sql(view: str, group: str) -> str:
    """image_id and the most probable class of one zero-shot group."""
    g = group.replace("'", "''")
    return (
        f"SELECT image_id, arg_max(class_id, prob) AS label FROM {qi(view)} "
        f"WHERE group_id = '{g}' GROUP BY image_id"
    )


def modality_sql(tables: Tables) -> tuple[str, str] | None:
    """(SQL selecting ``image_id, label`` = the modality of each image, where it comes from):
    a ``modality`` column written by a pass, else the zero-shot ``modality`` group."""
    for col in MODALITY_COLUMNS:
        view = tables.find_with("image_id", col, prefer=("flags", "cues", "modality"))
        if view is not None:
            return (
                f"SELECT image_id, {qi(col)}::VARCHAR AS label FROM {qi(view)}",
                f"{view}.{col}",
            )
    view = zeroshot_view(tables)
    if view is not None and "modality" in zeroshot_groups(tables):
        return zeroshot_sql(view, "modality"), f"zero-shot CLIP ({view}, group 'modality')"
    return None
