"""The report-section registry: the page, its navigation and its "not computed yet" hints come
from the registered sections; a family adds one with one module and one template."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from exokiratory.engine import sections as registry
from exokiratory.engine.sections import ReportSection, add_section, children, page_sections

from .test_report import _workspace

FAKE_SECTION = """
from exokiratory.engine.sections import SectionContext, register_section


@register_section("fake", title="Fake family", order=55, template="fake.html.j2",
                  needs=("features",))
def gather(ctx: SectionContext) -> dict | None:
    t = ctx.tables.get("features")
    if t is None or not t.rows:
        return None
    return {"rows": t.rows, "evil": "<script>alert(1)</script>"}


@register_section("boom", title="Broken block", order=25, parent="galleries",
                  template="fake.html.j2")
def broken(ctx: SectionContext) -> dict:
    raise RuntimeError("boom")
"""

FAKE_TEMPLATE = "<p class='fake'>{{ data.rows|num }} sensed rows; {{ data.evil }}</p>\n"


def test_page_order_and_blocks() -> None:
    ids = [s.id for s in page_sections()]
    known = ["overview", "galleries", "distributions", "maps", "clusters", "segments", "stop"]
    assert [i for i in ids if i in known] == known and ids[-1] == "tables"
    assert ids[:2] == ["overview", "galleries"]  # what a person came to see opens the page
    assert [b.id for b in children("galleries")][:3] == ["flag-galleries", "outliers", "strata"]
    assert all(s.package for s in registry.sections())
    clash = ReportSection("overview", "Another overview", 1, "somewhere")
    with pytest.raises(ValueError, match="registered twice"):
        add_section(clash)


def test_a_family_section_is_one_module_and_one_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = tmp_path / "pkgs" / "exo_fake_family"
    family.mkdir(parents=True)
    (family / "__init__.py").write_text("")
    (family / "section.py").write_text(FAKE_SECTION)
    (family / "fake.html.j2").write_text(FAKE_TEMPLATE)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setattr(registry, "_SECTIONS", dict(registry._SECTIONS))  # undone afterwards
    monkeypatch.delitem(sys.modules, "exo_fake_family.section", raising=False)
    __import__("exo_fake_family.section")

    ws = _workspace(tmp_path, embed=False)
    page = Path(str(ws.report(progress=False).local_path)).read_text("utf-8")
    nav = re.findall(r"<a href='#([^']+)'>", page.split("</nav>")[0])
    assert nav.index("maps") < nav.index("fake") < nav.index("clusters")
    fake = page[page.index("<section id='fake'>") :].split("</section>")[0]
    assert "<h2>Fake family</h2>" in fake
    assert "not computed yet: run <code>exokiratory run sense</code>" in fake
    # a failing block says so; the rest of the page is built
    assert "this section could not be built: RuntimeError: boom" in page
    assert "id='tables'" in page

    ws.run(["sense"], workers=1, progress=False)
    page = Path(str(ws.report(progress=False).local_path)).read_text("utf-8")
    fake = page[page.index("<section id='fake'>") :].split("</section>")[0]
    n = int(ws.sql("SELECT count(*) AS n FROM features")["n"][0].as_py())
    assert f"<p class='fake'>{n} sensed rows; &lt;script&gt;" in fake  # autoescaped
    assert "<script>alert" not in page
