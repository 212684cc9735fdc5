"""The README's first command works from a fresh clone: it builds its own venv and serves the demo."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import aiohttp

from tests.processes import ROOT, free_port
from tests.support import WebChatClient


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "the README must open with a shell block"
    return [line.split("#")[0].strip() for line in block.group(1).strip().splitlines()]


def test_readme_opens_with_exactly_two_commands() -> None:
    assert readme_commands() == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci  # CI runs the README's test command


async def test_make_run_from_a_fresh_clone(empty_db_url: str, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKET_", "VIRTUAL_ENV"))}
    env.update({"LOKET_PORT": str(port), "DATABASE_URL": empty_db_url, "LOKET_LOG_FORMAT": "plain",
                "PATH": "/usr/local/bin:/usr/bin:/bin:" + str(Path(os.environ.get("HOME", "/root")) / ".pyenv/shims")})
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        ready = False
        async with aiohttp.ClientSession() as s:
            for _ in range(1800):  # up to 3 minutes: a fresh venv installs the pinned dependencies
                if proc.poll() is not None:
                    break
                try:
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            ready = True
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assert ready, (tmp_path / "run.log").read_text()[-3000:]
            async with s.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200 and "widget.js" in await r.text()
        assert (clone / ".venv" / "bin" / "loket").exists()
        async with WebChatClient(f"http://127.0.0.1:{port}") as chat:
            reply = await chat.say("halo")
            assert reply["author"] == "bot" and reply["text"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
