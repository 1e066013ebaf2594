"""What the selective passes of PASS 6 (OCR, depth, detection) share: routing and decoding.

Routing: which images such a pass works on.

Such a pass works on the readable images for which its ``route`` holds: a SQL boolean
expression over the columns of the ``flags`` view, aliased ``f`` (``f.is_worth_gpu AND
f.is_photo``, ``NOT f.is_junk AND f.is_scan``...). Each pass's default route says which base
set it starts from: depth and detection take the images worth GPU time (``is_worth_gpu``:
not junk, canonical among near duplicates), OCR every readable image that is not tiny, since
sparse documentation pages look near-blank to the junk rule and alike to perceptual hashes. ``routed_only: false`` (or ``run --all``) takes every readable
image.
Without flags (``flags`` not derived yet) every readable image is taken, as the embedding
passes do, with a warning.

The route chooses units only: it never changes a row, so it is left out of the output folder's
version (:func:`row_version`) and a new route reuses every row already computed.

Decoding (:func:`decoded_inputs`): a model pass reads and decodes the images of a batch in
threads, at most ``2 x threads`` ahead of the model, one decode per image (EXIF orientation,
alpha on white, decompression-bomb guard) at a working size whose longer side is at most
``decode_side`` px (large images are downscaled before the model's own resize: a 24 MP photo
never reaches the model at full size); a file that cannot be read or decoded is an error row.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from exokiratory.engine.step import IMAGE_UNITS_SQL, BatchContext, PassParams
from exokiratory.engine.threads import in_threads

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

T = TypeVar("T")

ROUTED_SQL = (
    "SELECT u.* FROM ("
    + IMAGE_UNITS_SQL
    + """) u
JOIN flags f USING (image_id)
WHERE ({route})
ORDER BY u.image_idx
"""
)

#: parameters that only choose units or shape views: never part of the output folder's version
UNIT_ONLY_PARAMS: frozenset[str] = frozenset({"route", "routed_only"})


def check_route(route: str) -> str:
    """A route as given, if it can only be one SQL expression (no statement separator)."""
    text = route.strip()
    if not text:
        raise ValueError("route must be a SQL condition over the flags view (alias f)")
    if ";" in text or "--" in text:
        raise ValueError("route must be one SQL condition (no ';', no comments)")
    return text


def routed_units(catalog: Catalog, name: str, route: str, routed_only: bool) -> pa.Table:
    """The images a routed pass wants (see the module docstring), in ``image_idx`` order.

    Raises:
        ValueError: the route is not valid SQL over the flags view (names ``passes.<name>``).
    """
    if not routed_only:
        return catalog.query(IMAGE_UNITS_SQL)
    if "images_routed" not in catalog.views:
        log.debug("%s: no flags yet (run flags first): taking every readable image", name)
        return catalog.query(IMAGE_UNITS_SQL)
    try:
        return catalog.query(ROUTED_SQL.format(route=check_route(route)))
    except Exception as exc:  # a DuckDB parser or binder error in the user's condition
        if isinstance(exc, ValueError) and str(exc).startswith("route"):
            raise ValueError(f"passes.{name}.route: {exc}") from exc
        raise ValueError(f"passes.{name}.route {route!r} is not a valid condition: {exc}") from exc


def row_version(version: str, params: PassParams, view_only: Iterable[str] = ()) -> str:
    """``version``, plus a digest of the parameters that change rows when they differ from the
    defaults (route, routed_only and ``view_only`` parameters are left out)."""
    skip = UNIT_ONLY_PARAMS | set(view_only)
    changed = {k: v for k, v in params.model_dump(exclude_defaults=True).items() if k not in skip}
    if not changed:
        return version
    text = json.dumps(changed, sort_keys=True, default=str)
    return f"{version}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def decoded_inputs(
    units: list[dict[str, Any]],
    ctx: BatchContext,
    prepare: Callable[[Any], T],
    decode_side: int,
    threads: int,
) -> Iterator[tuple[Any, T] | str]:
    """For each unit, in order: ``(decoded image, prepare(decoded image))`` or the error text
    (see the module docstring); ``prepare`` runs in the decode threads too."""
    from exokiratory.core.decode import load_working_image

    def one(unit: dict[str, Any]) -> tuple[Any, T] | str:
        try:
            data = ctx.read_bytes(unit["path"], unit.get("source"))
            img = load_working_image(
                data, working_size=decode_side, max_pixels=ctx.max_image_pixels
            )
            return img, prepare(img.rgb)
        except Exception as exc:  # a bad image is a row, never a crash
            return f"{type(exc).__name__}: {exc}"

    return in_threads(one, units, threads)
