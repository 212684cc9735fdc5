"""A `call` node runs a custom action on a REAL rasa-sdk action server; the slot it sets drives a branch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flows.helpers import Driver, started_runtime, texts, write_flow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rasa_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    workdir = tmp_path_factory.mktemp("rasa")
    log = (workdir / "rasa.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rasa_sdk", "--actions", "tests.flows.rasa_actions", "--port", str(port)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the rasa-sdk action server did not start: "
                                   + (workdir / "rasa.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/webhook"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


FLOW = """
id: member
version: 1
start: ask_member
triggers: [member]
nodes:
  ask_member:
    type: ask
    save: member_no
    text: {id: "Nomor member?", en: "Member number?"}
    validate: {type: regex, pattern: '\\d{4,8}'}
    next: check
  check:
    type: call
    rasa_action: %(action)s
    url: %(url)s
    timeout: 5
    next: route
  route:
    type: branch
    cases:
      - {if: {slot: tier, equals: gold}, goto: gold}
    else: basic
  gold:
    type: end
    text: {id: "Member emas ({checked_by})", en: "Gold member ({checked_by})"}
  basic:
    type: end
    text: {id: "Member biasa ({checked_by})", en: "Basic member ({checked_by})"}
"""


async def test_rasa_action_sets_a_slot_that_a_branch_uses(rasa_url: str, settings_factory: Any,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    write_flow(folder, "member.yaml", FLOW % {"action": "action_check_member", "url": rasa_url})
    rt = await started_runtime(settings_factory(LOKET_FLOWS=str(folder)))
    try:
        for number, tier in (("91234", "emas"), ("51234", "biasa")):
            d = Driver(rt, language="id")
            assert "Nomor member?" in texts(await d.send("member"))
            replies = await d.send(number)
            # the action's response (with its button), then the branch's answer
            assert replies[0]["body"] == f"Member {number} checked by Rasa."
            assert replies[0]["choices"] == [{"label": "OK", "value": "ok"}]
            assert replies[1]["body"] == f"Member {tier} ({number})"
            assert (await d.conversation())["flow"] is None
            calls = await d.touchpoints("flow_call")
            assert [c["payload"]["call"] for c in calls] == ["action_check_member"]
    finally:
        await rt.stop()


@pytest.mark.parametrize(("action", "error"), [
    ("action_broken", "action server answered HTTP 500: the CRM is down"),
    ("action_missing", "action server answered HTTP 404"),
])
async def test_a_failing_rasa_action_falls_back_politely(rasa_url: str, settings_factory: Any, tmp_path: Path,
                                                         action: str, error: str) -> None:
    folder = tmp_path / "flows"
    write_flow(folder, "member.yaml", FLOW % {"action": action, "url": rasa_url})
    rt = await started_runtime(settings_factory(LOKET_FLOWS=str(folder)))
    try:
        d = Driver(rt, language="id")
        await d.send("member")
        reply = texts(await d.send("91234"))
        assert "Maaf, sistem kami sedang tidak bisa memproses" in reply
        conv = await d.conversation()
        assert conv["state"] == "queued" and conv["handover"]["reason"] == "handler_failed"
        errs = await d.touchpoints("flow_error")
        assert errs[0]["payload"]["call"] == action and errs[0]["payload"]["error"].startswith(error)
    finally:
        await rt.stop()


async def test_an_unreachable_action_server_falls_back(settings_factory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    write_flow(folder, "member.yaml", FLOW % {"action": "action_check_member",
                                              "url": f"http://127.0.0.1:{_free_port()}/webhook"})
    rt = await started_runtime(settings_factory(LOKET_FLOWS=str(folder)))
    try:
        d = Driver(rt, language="en")
        await d.send("member")
        assert "our system cannot handle this request" in texts(await d.send("91234"))
        assert "unreachable" in (await d.touchpoints("flow_error"))[0]["payload"]["error"]
    finally:
        await rt.stop()
