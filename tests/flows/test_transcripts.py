"""The demo flows' transcripts, in both languages, through the real router and pipeline, rendered as web chat,
Telegram and WhatsApp show them (buttons, callback data, numbers and typed words with typos all select)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.flows.component import DEMO_PATH
from bot.flows.transcripts import MODES, load_transcript, run_transcript
from tests.flows.helpers import FLOW_COMPONENTS

TRANSCRIPTS = sorted((DEMO_PATH / "transcripts").glob("*.yaml"))


def test_both_demo_flows_have_transcripts_in_both_languages() -> None:
    names = {p.stem for p in TRANSCRIPTS}
    assert {"clinic_id", "clinic_en", "shop_id", "shop_en"} <= names


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
async def test_demo_transcript_in_every_channel_style(path: Path, db_url: str, tmp_path: Path) -> None:
    tr = load_transcript(path)
    results = await run_transcript(tr, db_url, tmp_path / "data", migrate=False, components=FLOW_COMPONENTS)
    assert [r.mode for r in results] == list(MODES)
    for r in results:
        assert r.ok, f"{r.mode}:\n" + "\n".join(r.log) + "\nFAILURES:\n" + "\n".join(r.failures)
        assert r.turns == len(tr.turns)


async def test_a_wrong_expectation_fails_with_the_reason(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "flows" / "transcripts" / "wrong.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "name: wrong\nnow: '2026-11-24T10:00:00+07:00'\nturns:\n"
        "  - customer: halo\n    bot: [Selamat datang]\n"
        "  - press: Toko Batik\n    bot: [Klinik Sehat]\n"
        "  - press: Not an option\n",
        encoding="utf-8",
    )
    tr = load_transcript(path)
    tr.flows = DEMO_PATH
    results = await run_transcript(tr, db_url, tmp_path / "data", modes=("whatsapp",), migrate=False,
                                   components=FLOW_COMPONENTS)
    assert not results[0].ok
    assert results[0].turns == 2
    assert "turn 2 reply 1: expected 'Klinik Sehat' in 'Toko Batik — ada yang bisa kami bantu?" in \
        results[0].failures[0]
