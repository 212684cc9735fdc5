"""Broken flow files: each produces the expected error with file, line and fix; the CLI exits non-zero."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.flows.component import DEMO_PATH
from bot.flows.loader import load_folder
from bot.handlers.registry import names

BROKEN = Path(__file__).parent / "broken"
CASES = sorted(BROKEN.glob("*.yaml"))


def expectation(path: Path) -> tuple[int, list[str]]:
    m = re.match(r"# expect: (\d+): (.*)", path.read_text(encoding="utf-8").splitlines()[0])
    assert m, f"{path} must start with '# expect: LINE: message | fix'"
    return int(m.group(1)), [part.strip() for part in m.group(2).split("|")]


def test_there_are_many_broken_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_broken_flow_names_file_line_and_fix(path: Path) -> None:
    line, (message, fix) = expectation(path)
    _, errors = load_folder(path, names())
    assert len(errors) == 1, [str(e) for e in errors]
    err = errors[0]
    assert (err.file, err.line) == (str(path), line), str(err)
    assert message in err.message
    assert fix in err.fix
    assert str(err).startswith(f"{path}:{line}: ")


def test_demo_flows_are_valid() -> None:
    flows, errors = load_folder(DEMO_PATH, names())
    assert errors == []
    assert {f.id for f in flows} == {"main", "clinic", "shop"}


def test_cli_validate_exits_non_zero_with_file_line_and_fix() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["flows", "validate", str(BROKEN / "unknown_type.yaml")])
    assert bad.exit_code == 1
    assert f"{BROKEN / 'unknown_type.yaml'}:7" in bad.output
    assert "did you mean 'say'?" in bad.output
    good = runner.invoke(app, ["flows", "validate", str(DEMO_PATH)])
    assert good.exit_code == 0, good.output
    assert "ok clinic version 1" in good.output


def test_cli_graph_prints_mermaid() -> None:
    result = CliRunner().invoke(app, ["flows", "graph", "shop"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("flowchart TD")
    assert "lookup[[\"lookup (call: order_status)\"]]" in result.output
    assert 'welcome -->|"Cek status pesanan"| ask_order' in result.output


def test_a_missing_flow_jump_and_duplicate_ids_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("id: a\nversion: 1\nstart: s\nnodes:\n  s: {type: goto, flow: nope}\n")
    (tmp_path / "b.yaml").write_text("id: a\nversion: 2\nstart: s\nnodes:\n  s: {type: end}\n")
    _, errors = load_folder(tmp_path, names())
    text = "\n".join(map(str, errors))
    assert f"{tmp_path / 'b.yaml'}:1: flow id 'a' is also used by {tmp_path / 'a.yaml'}" in text
    assert "starts flow 'nope', which is not loaded" in text
