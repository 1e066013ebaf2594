from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exokiratory.api.cli import app

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def test_init_scan_run_status_sql(tmp_path: Path, photos: Path) -> None:
    ws = str(tmp_path / "ws")
    r = invoke("init", ws, "--source", str(photos))
    assert r.exit_code == 0, r.output
    r = invoke("scan", "-w", ws)
    assert r.exit_code == 0 and "5 new images" in r.output
    r = invoke(
        "run",
        "probe",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--limit",
        "3",
        env={"EXOKIRATORY_WORKSPACE": ws},
    )
    assert r.exit_code == 0 and "3/3 units processed" in r.output
    r = invoke("status", "-w", ws)
    assert r.exit_code == 0 and "probe" in r.output
    st = json.loads(invoke("status", "-w", ws, "--json").output)
    probe = st["passes"][0]
    assert (probe["done"], probe["wanted"], probe["remaining"]) == (3, 5, 2)
    r = invoke(
        "sql",
        "-w",
        ws,
        "--format",
        "csv",
        "SELECT image_idx, format FROM images ORDER BY image_idx",
    )
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [int(x["image_idx"]) for x in rows] == [0, 1, 2, 3, 4]
    r = invoke("sql", "-w", ws, "-f", "json", "SELECT count(*) AS n FROM paths")
    assert json.loads(r.output) == [{"n": 5}]
    r = invoke("sql", "-w", ws, "SELECT image_id, status FROM images")
    assert r.exit_code == 0 and "ok" in r.output


def test_errors_are_clear(tmp_path: Path) -> None:
    from exokiratory.api import cli

    with pytest.raises(cli.CliError, match="no workspace given"):
        invoke("scan", env={"EXOKIRATORY_WORKSPACE": ""})
    from exokiratory.core.config import ConfigError

    with pytest.raises(ConfigError, match="not an exokiratory workspace"):
        invoke("status", "-w", str(tmp_path))
    ws = str(tmp_path / "ws")
    invoke("init", ws, "--source", str(tmp_path))
    with pytest.raises(ValueError, match="unknown pass"):
        invoke("run", "nope", "-w", ws)


def test_main_prints_error_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "exokiratory", "status", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "not an exokiratory workspace" in r.stderr and "Traceback" not in r.stderr
