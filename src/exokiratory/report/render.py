"""HTML rendering with jinja2: one self-contained file (inline CSS, JS, SVG and JPEG thumbnails).

The page shell (``templates/page.html.j2``) holds the header, the navigation and one
``<section>`` per page section of the registry (:mod:`exokiratory.engine.sections`); each
section's body is its own template, found beside the module that registered it (a family's
``passes/<family>/``) or, for shared templates, in ``templates/``. Autoescape is on everywhere.
Thumbnails are stored once in a JSON block (``exo-thumbs``) and referenced by ``data-thumb``
attributes, so an image shown in several places is embedded once; the embedding maps are drawn
by the inline script from the maps section's JSON block.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from exokiratory.core.tables import ColumnSummary
from exokiratory.engine.sections import DEFAULT_MISSING, ReportSection, producers_of
from exokiratory.report.charts import histogram_chart
from exokiratory.report.randomweight import models_behind
from exokiratory.report.thumbs import Thumb

REPORT_PACKAGE = "exokiratory.report"

try:
    import jinja2
    from markupsafe import Markup, escape
except ImportError as exc:  # pragma: no cover - the report extra installs it
    raise ImportError("the report needs jinja2: pip install 'exokiratory[report]'") from exc


@dataclass
class Part:
    """A gathered section: what its ``gather`` returned (or why it failed)."""

    section: ReportSection
    data: Any = None
    error: str | None = None
    html: str = ""
    children: list[Part] = field(default_factory=list)


@dataclass
class Page:
    title: str
    workspace: str
    built_at: str
    seconds: float
    n_images: int
    parts: list[Part]
    thumbs: dict[str, Thumb]
    random_weight: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def num(v: Any) -> str:
    """A number as the report writes it (thousands separators, 4 significant digits)."""
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def script_json(obj: Any) -> Markup:
    """Compact JSON safe inside ``<script>`` (no ``</``)."""
    return Markup(json.dumps(obj, separators=(",", ":")).replace("</", "<\\/"))


def columns_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The union of the records' keys, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def summary_line(s: ColumnSummary) -> str:
    """The one-line summary of a column (true count, distinct values, min, max, mean)."""
    stats = []
    if s.n_true is not None:
        stats.append(f"true {num(s.n_true)}")
    if s.distinct is not None:
        stats.append(f"~{num(s.distinct)} distinct")
    if s.minimum is not None:
        stats.append(f"min {num(s.minimum)}")
    if s.maximum is not None:
        stats.append(f"max {num(s.maximum)}")
    if s.mean is not None:
        stats.append(f"mean {num(s.mean)}")
    return ", ".join(stats)


def short_path(path: str) -> str:
    """A readable path for a caption: the last folder and the file name (``photos/a.jpg``)."""
    parts = [p for p in str(path or "").replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:])


def bar_width(v: float, top: float) -> int:
    return max(1, round(120 * v / (top or 1)))


def hint_html(text: str, producers: Sequence[str], needs: Sequence[str] = ()) -> Markup:
    """``text`` with ``{run}`` made the command that fills the data (or, when no registered
    step does, the views it needs)."""
    before, sep, after = text.partition("{run}")
    if not sep:
        return escape(text)
    if producers:
        cmd = Markup("<code>exokiratory run %s</code>") % " ".join(producers)
    else:
        views = Markup(", ").join(Markup("<code>%s</code>") % v for v in needs)
        cmd = Markup("a step that writes ") + views
    return escape(before) + cmd + escape(after)


def hinter(step_views: Mapping[str, Sequence[str]]) -> Callable[..., Markup]:
    """``run_hint(view_or_views, text)`` for templates."""

    def run_hint(views: str | Sequence[str], text: str = DEFAULT_MISSING) -> Markup:
        pats = [views] if isinstance(views, str) else list(views)
        return hint_html(text, producers_of(pats, step_views), pats)

    return run_hint


def section_hint(s: ReportSection, step_views: Mapping[str, Sequence[str]]) -> Markup:
    """What a section says when it has nothing to show."""
    producers = list(s.producers) or producers_of(s.needs, step_views)
    return hint_html(s.missing, producers, s.needs)


def _asset(name: str) -> str:
    return resources.files(REPORT_PACKAGE).joinpath("assets", name).read_text("utf-8")


def environment(
    packages: Iterable[str],
    thumbs: Mapping[str, Thumb],
    step_views: Mapping[str, Sequence[str]],
    random_weight: Mapping[str, Sequence[str]] | None = None,
) -> jinja2.Environment:
    """The report's jinja2 environment: shared templates, then each section package's own
    (``<package>/<name>``); filters and globals the templates use."""
    prefixed = {p: jinja2.PackageLoader(p, ".") for p in sorted(set(packages))}
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [jinja2.PackageLoader(REPORT_PACKAGE, "templates"), jinja2.PrefixLoader(prefixed)]
        ),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(num=num, script_json=script_json, fmt=format)
    env.globals.update(
        thumbs=thumbs,
        run_hint=hinter(step_views),
        histogram_chart=histogram_chart,
        columns_of=columns_of,
        summary_line=summary_line,
        bar_width=bar_width,
        short_path=short_path,
        random_weight_of=lambda views: models_behind(
            [views] if isinstance(views, str) else list(views), random_weight or {}, step_views
        ),
    )
    return env


def render_part(env: jinja2.Environment, part: Part, hint: Markup) -> None:
    """Render a gathered section's body into ``part.html``."""
    s = part.section
    if part.error is not None:
        tpl = env.get_template("error.html.j2")
        part.html = tpl.render(section=s, error=part.error)
    elif part.data is None or s.template is None:
        part.html = "" if s.quiet or s.template is None else str(_missing(hint))
    else:
        tpl = env.select_template([f"{s.package}/{s.template}", s.template])
        part.html = tpl.render(data=part.data, section=s, hint=hint)


def _missing(text: Markup) -> Markup:
    return Markup("<p class='missing-data'>%s</p>") % text


def render_page(env: jinja2.Environment, page: Page) -> str:
    thumbs = {k: base64.b64encode(v.jpeg).decode("ascii") for k, v in page.thumbs.items() if v.jpeg}
    return env.get_template("page.html.j2").render(
        page=page,
        css=Markup(_asset("report.css")),
        js=Markup(_asset("report.js")),
        thumbs_json=thumbs,
    )
