"""The README's main command: ``exokiratory demo`` builds, runs every pass, and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from exokiratory import Workspace
from exokiratory.config import ConfigError
from exokiratory.demo import run_demo


def test_demo_runs_every_pass_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    summary = run_demo(root, workers=2)
    assert "68 new images" in summary and "flags:" in summary
    ws = Workspace(root)
    st = ws.status()
    assert all(p.remaining == 0 and p.done > 0 for p in st.passes)
    assert st.derived and st.derived[0].up_to_date
    assert st.images_by_status == {"ok": 63, "unreadable": 5}
    again = run_demo(root, workers=2)
    assert "0 new images" in again and "up to date" in again


def test_demo_refuses_a_foreign_workspace(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "ws", [str(tmp_path)])
    with pytest.raises(ConfigError, match="did not create"):
        run_demo(tmp_path / "ws")
