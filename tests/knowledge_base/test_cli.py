"""`loket kb import` and `loket kb eval` as the command line runs them (typer's CliRunner), plus `kb gaps`."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from knowledge_base import DEMO_PATH
from knowledge_base.cli import app  # the `loket kb` group (bot/cli.py FEATURE_CLIS "kb")


def run(args: list[str], db_url: str, tmp_path: Path, extra: dict[str, str] | None = None,
        expect_exit: int = 0) -> str:
    env = {"DATABASE_URL": db_url, "LOKET_SECRET_KEY": "k" * 32, "LOKET_DATA_DIR": str(tmp_path / "d"),
           "LOKET_KB_SEMANTIC": "off", "COLUMNS": "200"} | (extra or {})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert result.exit_code == expect_exit, result.output
    return result.output


def test_import_then_eval_on_the_shipped_set_prints_the_figures(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    for p in (DEMO_PATH / "id").glob("*.md"):
        (tmp_path / "kb" / p.name).write_text(p.read_text())
    (tmp_path / "kb" / "broken.md").write_text("---\nid: [\n---\nbody")
    out = run(["import", str(tmp_path / "kb")], db_url, tmp_path)
    assert "20 new, 0 updated, 0 unchanged; 1 rejected" in out
    assert "broken.md" in out and "malformed front matter" in out
    out = run(["import", str(DEMO_PATH)], db_url, tmp_path)
    assert "20 new, 0 updated, 20 unchanged; 0 rejected" in out
    out = run(["eval", str(DEMO_PATH / "eval_id.csv")], db_url, tmp_path)
    for label in ("155 (140 answerable, 15 __none__)", "accuracy (answerable, top-1)", "abstention on __none__",
                  "macro-F1", "precision at 50% coverage", "precision at 70% coverage", "precision at 90% coverage",
                  "precision at threshold", "latency p50 / p99"):
        assert label in out, out
    accuracy = float(out.split("accuracy (answerable, top-1)")[1].split("%")[0].strip(" │|"))
    assert accuracy >= 80.0, out
    out = run(["gaps"], db_url, tmp_path)
    assert "no unanswered questions" in out


def test_eval_with_train_and_test_files(db_url: str, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    rows = {
        "refund": ["where is my refund", "refund not received", "how long do refunds take", "money back please",
                   "refund status", "get my money back"],
        "card_lost": ["i lost my card", "my card was stolen", "card missing", "cannot find my card",
                      "lost card block it", "stolen card what now"],
        "top_up": ["how do i top up", "add money to account", "top up failed", "top up with card",
                   "topping up", "top up limit"],
    }
    train.write_text("text,category\n" + "".join(f"{q},{k}\n" for k, qs in rows.items() for q in qs)
                     + "tell me a joke,__none__\nsing a song,__none__\n")  # calibration only, not articles
    test.write_text("text,category\nrefund still not here,refund\nsomeone stole my card,card_lost\n"
                    "add funds to my account,top_up\nwhat is the weather,oos\n")
    out = run(["eval", "--train", str(train), "--test", str(test), "--shots", "5"], db_url, tmp_path)
    assert "held-out part of train.csv" in out and "test.csv" in out
    assert "4 (3 answerable, 1 __none__)" in out
    labels_line = next(line for line in out.splitlines() if "labels" in line)
    assert labels_line.rstrip(" │|").endswith("3"), labels_line  # the __none__ rows did not become an article
