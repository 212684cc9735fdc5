"""``loket flows validate|graph|test|list`` and ``loket chat``."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Flows: validate YAML files, draw them, run their transcripts.", no_args_is_help=True)
console = Console()


def _known_handlers() -> set[str]:
    """Handlers of every component (importing a component registers its handlers)."""
    import importlib

    import bot.handlers  # noqa: F401
    from bot.components import COMPONENTS
    from bot.handlers.registry import names

    for name in COMPONENTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a component that cannot import here only hides its handlers
            pass
    return names()


@app.command("validate")
def validate(path: Path = typer.Argument(..., help="A flow file or a folder of flow files.")) -> None:
    """Check flow files: exits 1 and prints file:line, the problem and the fix for each error."""
    from bot.flows.loader import load_folder

    flows, errors = load_folder(path, _known_handlers())
    for err in errors:
        console.print(f"[red]{err.file}:{err.line}[/red]: {err.message}\n    [green]fix:[/green] {err.fix}",
                      highlight=False, soft_wrap=True)
    if errors:
        console.print(f"[red]{len(errors)} error(s)[/red] in {path}")
        raise typer.Exit(1)
    for f in flows:
        console.print(f"[green]ok[/green] {f.id} version {f.version} ({len(f.nodes)} nodes) — {f.path}")


def _find_flow(flow: str, path: Path | None):  # type: ignore[no-untyped-def]
    from bot.flows.component import DEMO_PATH
    from bot.flows.loader import load_file, load_folder

    candidate = Path(flow)
    if candidate.is_file():
        fdef, errors = load_file(candidate)
    else:
        flows, errors = load_folder(path or DEMO_PATH)
        fdef = next((f for f in flows if f.id == flow), None)
        if fdef is None and not errors:
            console.print(f"[red]no flow '{flow}' in {path or DEMO_PATH}[/red]: pass a flow file or use --path; "
                          f"flows there: {', '.join(f.id for f in flows)}")
            raise typer.Exit(1)
    if errors:
        for err in errors:
            console.print(str(err), highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    return fdef


@app.command("graph")
def graph(
    flow: str = typer.Argument(..., help="A flow id (in --path, default the demo flows) or a flow file."),
    path: Path = typer.Option(None, "--path", help="Folder of flow files (default: LOKET_FLOWS or the demo)."),
    lang: str = typer.Option("id", "--lang", help="Language of the edge labels (id or en)."),
) -> None:
    """Print a Mermaid flowchart of a flow (paste it into Markdown inside ```mermaid)."""
    import os

    from bot.flows.graph import mermaid

    if path is None and os.environ.get("LOKET_FLOWS"):
        path = Path(os.environ["LOKET_FLOWS"])
    print(mermaid(_find_flow(flow, path), lang))


@app.command("list")
def list_flows(path: Path = typer.Argument(None, help="Folder of flow files (default: the demo).")) -> None:
    """List flows with their version, start node, triggers and timeout."""
    from bot.flows.component import DEMO_PATH
    from bot.flows.loader import load_folder

    flows, errors = load_folder(path or DEMO_PATH)
    for f in flows:
        console.print(f"{f.id} v{f.version}: start={f.start} nodes={len(f.nodes)} timeout={f.timeout_seconds}s "
                      f"triggers={', '.join(f.triggers) or '-'}", highlight=False)
    if errors:
        console.print(f"[red]{len(errors)} error(s)[/red]; run `loket flows validate`")
        raise typer.Exit(1)


@app.command("test")
def test(
    path: Path = typer.Argument(..., help="A transcript file or a folder (transcripts/ folders are searched)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print every conversation."),
) -> None:
    """Run transcripts through the real router on a throw-away database, in web chat, Telegram and WhatsApp form."""
    from bot.flows.transcripts import TranscriptError, run_path, transcript_files

    if not transcript_files(path):
        console.print(f"[red]no transcripts under {path}[/red] (put them in a `transcripts/` folder)")
        raise typer.Exit(1)
    try:
        results = asyncio.run(run_path(path))
    except TranscriptError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    failed = 0
    for r in results:
        mark = "[green]pass[/green]" if r.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {r.transcript} [{r.mode}] ({r.turns} turns)", highlight=False)
        if verbose or not r.ok:
            for line in r.log:
                console.print("    " + line, highlight=False, markup=False)
        for f in r.failures:
            console.print(f"    [red]{f}[/red]", highlight=False)
        failed += not r.ok
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


def chat(
    flow: str = typer.Option(None, "--flow", help="Start this flow (default: the default flow)."),
    lang: str = typer.Option(None, "--lang", help="Your language: id or en."),
) -> None:
    """Talk to the bot in the terminal, through the same router and database as `loket run` (web chat channel)."""
    from bot.cli import run_async, settings_or_exit

    settings = settings_or_exit()
    run_async(_chat(settings, flow, lang))


async def _chat(settings, flow: str | None, lang: str | None) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from bot.messages import InboundMessage
    from bot.runtime import Runtime
    from storage.models import conversations, identities, messages

    rt = Runtime(settings, role="web")
    await rt.prepare()
    await rt.start()
    address = f"terminal-{uuid.uuid4().hex[:8]}"
    console.print(f"[dim]talking as {address} on the web chat channel; Ctrl-D to quit. Numbers pick options.[/dim]")
    last_id = 0
    pending: InboundMessage | None = None
    if flow:
        pending = InboundMessage(channel="webchat", address=address, provider_message_id=uuid.uuid4().hex,
                                 kind="start", language_hint=lang, meta={"start_flow": flow})
    try:
        while True:
            if pending is None:
                try:
                    text = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    break
                pending = InboundMessage(channel="webchat", address=address, provider_message_id=uuid.uuid4().hex,
                                         text=text, language_hint=lang)
            events: list[tuple[str, dict[str, object]]] = []
            async with rt.engine.begin() as conn:
                await rt.pipeline.handle_inbound(conn, pending, events)
            pending = None
            async with rt.engine.connect() as conn:
                ident = (await conn.execute(select(identities).where(identities.c.channel == "webchat",
                                                                      identities.c.address == address))).mappings().one()
                conv_ids = [r[0] for r in await conn.execute(
                    select(conversations.c.id).where(conversations.c.identity_id == ident["id"]))]
                outs = (await conn.execute(select(messages).where(
                    messages.c.conversation_id.in_(conv_ids), messages.c.direction == "out", messages.c.id > last_id)
                    .order_by(messages.c.id))).mappings().all()
            for o in outs:
                last_id = o["id"]
                console.print(f"[bold cyan]bot>[/bold cyan] {o['body']}", highlight=False)
                for i, c in enumerate(o["choices"] or [], 1):
                    console.print(f"      {i}. {c['label']}", highlight=False)
    finally:
        await rt.stop()
