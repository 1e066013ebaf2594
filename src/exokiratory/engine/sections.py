"""The report-section contract: how a pass family puts a section on the HTML report.

A family adds a section with one module, ``passes/<family>/section.py`` (imported by
:func:`exokiratory.engine.registry.discover`), and one jinja2 template beside it::

    @register_section("clusters", title="Clusters", order=60, template="clusters.html.j2",
                      needs=("clusters_*",))
    def gather(ctx: SectionContext) -> list[Gallery] | None:
        ...  # SQL over ctx.tables; ctx.show(gallery) asks for the gallery's thumbnails

The report (:mod:`exokiratory.report`) calls every section's ``gather`` in ``order`` while it
holds the workspace catalog, makes the thumbnails the sections asked for, and renders each
section's template with ``data`` (what ``gather`` returned) inside ``<section id=...>`` with its
``title`` as heading; the navigation comes from the same registry. ``gather`` returning None
means "nothing to show": the page then says ``not computed yet: run <code>exokiratory run
X</code>`` with X the ``producers`` (by default the registered steps whose views match
``needs``). A section with a ``parent`` is a block inside that section (a gallery among the
galleries) instead of a page section of its own.

What a section may use is all in :class:`SectionContext`: the catalog views and their summaries
(:class:`~exokiratory.core.tables.Tables`), the report parameters (:class:`SectionParams`), the
storage, the workspace status, the registered steps with the views they write and their
configured parameters, the random-weight models behind each view, and :class:`ThumbnailRequests`, implemented by the report, which makes the
thumbnails after every section has gathered. Nothing here imports the report.

Templates are rendered with autoescape on; they can import the report's macros
(``{% import "macros.html.j2" as m %}``: ``m.gallery``, ``m.histogram``, ``m.missing``,
``m.dict_table``, ``m.counts_table``) and call ``run_hint(view, text)`` for a "not computed
yet" line about one view. Gallery tiles (:class:`Gallery`, :class:`Tile`) are the common
currency of image sheets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from exokiratory.engine import registry

if TYPE_CHECKING:
    from exokiratory.core.storage import Storage
    from exokiratory.core.tables import Tables

G = TypeVar("G", bound=Callable[..., Any])

DEFAULT_MISSING = "not computed yet: run {run}"


# -- what a section may use ---------------------------------------------------------------------
class ThumbnailRequests(Protocol):
    """Thumbnails a section wants on the page (made by the report after every gather)."""

    def image(self, image_id: str) -> str:
        """Ask for the thumbnail of a whole image; returns its ``thumb_id`` (the image id)."""
        ...

    def crop(self, thumb_id: str, image_id: str, box: Sequence[float]) -> str:
        """Ask for a crop ``[x0, y0, x1, y1]`` (fractions of the oriented image) named
        ``thumb_id``; returns ``thumb_id``."""
        ...


class SectionParams(Protocol):
    """The report parameters a section may read (``exokiratory.report.ReportParams``)."""

    @property
    def map_sample(self) -> int: ...
    @property
    def gallery_size(self) -> int: ...
    @property
    def dup_groups(self) -> int: ...
    @property
    def per_stratum(self) -> int: ...
    @property
    def exemplar_clusters(self) -> int: ...
    @property
    def exemplars_per_cluster(self) -> int: ...
    @property
    def histogram_bins(self) -> int: ...
    @property
    def seed(self) -> int: ...


@dataclass
class Tile:
    """One thumbnail of a gallery: ``thumb_id`` names the image or the crop."""

    thumb_id: str
    caption: str
    title: str = ""
    image_id: str = ""
    crop: list[float] | None = None
    badge: str = ""


@dataclass
class Gallery:
    """A titled sheet of tiles, flat (``tiles``) or in named groups (``groups``)."""

    key: str
    title: str
    note: str = ""
    tiles: list[Tile] = field(default_factory=list)
    groups: list[tuple[str, list[Tile]]] = field(default_factory=list)

    def all_tiles(self) -> list[Tile]:
        return [*self.tiles, *(t for _, g in self.groups for t in g)]


def short(v: Any) -> str:
    """A value for a caption (floats to 3 significant digits)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def plural(count: int, what: str = "image") -> str:
    return f"{count:,} {what}" + ("" if count == 1 else "s")


def image_tile(row: Mapping[str, Any], caption: str = "") -> Tile:
    """The tile of a row with ``image_id`` and ``first_path``."""
    return Tile(row["image_id"], caption, str(row.get("first_path") or ""), row["image_id"])


def tiles(rows: Iterable[Mapping[str, Any]], caption: str) -> list[Tile]:
    """Image tiles captioned by ``caption`` formatted with each row's values."""
    return [image_tile(r, caption.format(**{k: short(v) for k, v in r.items()})) for r in rows]


def grouped_tiles(
    rows: Iterable[Mapping[str, Any]],
    group: Callable[[Mapping[str, Any]], str],
    make: Callable[[Mapping[str, Any]], Tile] = image_tile,
) -> list[tuple[str, list[Tile]]]:
    """Tiles grouped by ``group(row)``, groups and tiles in the order of the rows."""
    out: dict[str, list[Tile]] = {}
    for r in rows:
        out.setdefault(group(r), []).append(make(r))
    return list(out.items())


@dataclass
class SectionContext:
    """Everything a section's ``gather`` may use (built by the report for one build)."""

    tables: Tables
    params: SectionParams
    thumbs: ThumbnailRequests
    storage: Storage
    status: Any  # the workspace status (exokiratory.api.status.WorkspaceStatus)
    #: step name -> the catalog views it writes, in run order (every registered step)
    step_views: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: step name -> its ``passes.<name>`` parameters from the workspace config
    step_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: view -> ids of the random-weight ("tiny") models whose rows it holds
    random_weight: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def show(self, *galleries: Gallery | None) -> list[Gallery]:
        """The galleries that exist, after asking for the thumbnails of all their tiles."""
        out = [g for g in galleries if g is not None]
        for g in out:
            for t in g.all_tiles():
                if t.crop is not None:
                    self.thumbs.crop(t.thumb_id, t.image_id or t.thumb_id, t.crop)
                else:
                    self.thumbs.image(t.image_id or t.thumb_id)
        return out


# -- the registry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportSection:
    """A section of the report (see the module docstring).

    ``needs``: catalog views it shows (a name, or a prefix ending in ``*``); the table list links
    them to this section. ``producers``: steps that fill them, for the "not computed yet: run X"
    hint (empty: the registered steps whose views match ``needs``). ``template``: a jinja2
    template in the folder of ``package`` (the registering module's package). ``gather``: None
    for a section that only holds the blocks of other sections (``parent`` = its id).
    ``missing``: the text shown when ``gather`` returns None (``{run}`` becomes the command);
    ``quiet``: show nothing then.
    """

    id: str
    title: str
    order: int
    package: str
    template: str | None = None
    gather: Callable[[SectionContext], Any] | None = None
    needs: tuple[str, ...] = ()
    producers: tuple[str, ...] = ()
    nav: str = ""
    parent: str | None = None
    missing: str = DEFAULT_MISSING
    quiet: bool = False

    @property
    def label(self) -> str:
        """The navigation label."""
        return self.nav or self.title.lower()

    def shows(self, view: str) -> bool:
        return any(view_matches(view, pattern) for pattern in self.needs)


_SECTIONS: dict[str, ReportSection] = {}


def view_matches(view: str, pattern: str) -> bool:
    """``pattern`` is a view name, or a prefix when it ends with ``*``."""
    return view == pattern or (pattern.endswith("*") and view.startswith(pattern[:-1]))


def add_section(section: ReportSection) -> ReportSection:
    """Make a section known by its id (checked for duplicates)."""
    other = _SECTIONS.get(section.id)
    if other is not None and other != section:
        raise ValueError(f"report section {section.id!r} registered twice: {other} and {section}")
    _SECTIONS[section.id] = section
    return section


def register_section(
    id: str,
    *,
    title: str,
    order: int,
    template: str,
    needs: tuple[str, ...] = (),
    producers: tuple[str, ...] = (),
    nav: str = "",
    parent: str | None = None,
    missing: str = DEFAULT_MISSING,
    quiet: bool = False,
) -> Callable[[G], G]:
    """Decorator of a ``gather(ctx) -> data | None`` function: register it as a section whose
    ``template`` lives beside the decorated function's module."""

    def wrap(gather: G) -> G:
        add_section(
            ReportSection(
                id=id,
                title=title,
                order=order,
                package=template_package(gather.__module__),
                template=template,
                gather=gather,
                needs=needs,
                producers=producers,
                nav=nav,
                parent=parent,
                missing=missing,
                quiet=quiet,
            )
        )
        return gather

    return wrap


def template_package(module: str) -> str:
    """Where the templates of a section registered in ``module`` live: the package holding it
    (``passes.clusters`` for ``passes.clusters.section``), or the module itself when it is a
    package (``passes.flags.section``)."""
    mod = sys.modules.get(module)
    return module if hasattr(mod, "__path__") else module.rpartition(".")[0]


def sections() -> list[ReportSection]:
    """Every registered section (families discovered first), in page order: a page section,
    then its blocks, by ``order``."""
    registry.discover()
    top = sorted((s for s in _SECTIONS.values() if s.parent is None), key=_rank)
    out = []
    for s in top:
        out.append(s)
        out += children(s.id)
    return out


def page_sections() -> list[ReportSection]:
    """The sections with a heading and a navigation entry, in page order."""
    return [s for s in sections() if s.parent is None]


def children(section_id: str) -> list[ReportSection]:
    """The blocks of a section, by ``order``."""
    registry.discover()
    return sorted((s for s in _SECTIONS.values() if s.parent == section_id), key=_rank)


def _rank(s: ReportSection) -> tuple[int, str]:
    return (s.order, s.id)


def producers_of(patterns: Iterable[str], step_views: Mapping[str, Sequence[str]]) -> list[str]:
    """Step names (in the order of ``step_views``: step -> its views) writing a view that
    matches one of ``patterns``."""
    pats = tuple(patterns)
    return [
        name
        for name, views in step_views.items()
        if any(view_matches(v, p) for v in views for p in pats)
    ]
