from __future__ import annotations

from pathlib import Path

import pytest

from exokiratory import Workspace
from exokiratory.core.config import (
    ConfigError,
    Source,
    WorkspaceConfig,
    parse_config,
    render_config,
)
from exokiratory.core.layout import CONFIG_FILE, DIRECTORIES


def test_render_round_trips_with_odd_source_names() -> None:
    cfg = WorkspaceConfig(sources=[Source(path="/a b/c: d/été #1"), Source(path="s3://bucket/x")])
    assert parse_config(render_config(cfg)) == cfg


def test_unknown_keys_are_named_with_allowed_alternatives() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("scan:\n  batch_sise: 10\nrun:\n  engine: spark\n")
    msg = str(err.value)
    assert "scan.batch_sise: unknown key" in msg
    assert "batch_size" in msg and "hash_workers" in msg
    assert "run.engine" in msg and "'local' or 'ray'" in msg


def test_bad_values_and_bad_yaml() -> None:
    with pytest.raises(ConfigError, match=r"scan.batch_size: Input should be greater than 0"):
        parse_config("scan: {batch_size: 0}")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("scan: [")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config("- 1\n- 2\n")


def test_init_creates_layout_and_refuses_twice(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path / "imgs")])
    for d in DIRECTORIES:
        assert (tmp_path / "ws" / d).is_dir(), d
    text = (tmp_path / "ws" / CONFIG_FILE).read_text()
    assert text.startswith("# exokiratory workspace configuration")
    assert ws.config.sources[0].path == str(tmp_path / "imgs")
    with pytest.raises(ConfigError, match="already a workspace"):
        Workspace.init(tmp_path / "ws", [str(tmp_path)])


def test_opening_a_non_workspace_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exokiratory init"):
        Workspace(tmp_path)


def test_edited_config_is_validated_on_open(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "ws", [str(tmp_path)])
    cfg = tmp_path / "ws" / CONFIG_FILE
    cfg.write_text(cfg.read_text().replace("hash_workers: 4", "hash_workers: -1"))
    with pytest.raises(ConfigError, match=r"scan\.hash_workers"):
        Workspace(tmp_path / "ws")


def test_pass_params_are_validated(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path)])
    cfg = tmp_path / "ws" / CONFIG_FILE
    cfg.write_text(cfg.read_text().replace("passes: {}", "passes:\n  probe: {nope: 1}"))
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ValueError, match=r"passes\.probe: nope"):
        ws.passes(["probe"])
