"""Every console string exists in Indonesian and English, and every key a template asks for is defined."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from agent_console.i18n import UI

ROOT = Path(__file__).resolve().parents[2] / "agent_console"


def test_every_key_has_both_languages_and_is_defined_once() -> None:
    assert all(set(entry) == {"id", "en"} and all(entry.values()) for entry in UI.values())
    tree = ast.parse((ROOT / "i18n.py").read_text(encoding="utf-8"))
    literal = next(n.value for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and isinstance(n.value, ast.Dict))
    keys = [k.value for k in literal.keys if isinstance(k, ast.Constant)]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]


def test_templates_only_use_defined_keys() -> None:
    used = set()
    for tpl in (ROOT / "templates").glob("*.html"):
        used |= set(re.findall(r"_\('([a-z_.]+)'\)", tpl.read_text(encoding="utf-8")))
    assert used and not used - set(UI), sorted(used - set(UI))
