"""The ``loket`` command line. Feature commands live beside their features and are added here."""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cli_support import run_async, settings_or_exit, with_engine
from bot.clock import Clock
from storage.db import check_database, is_sqlite, make_engine

app = typer.Typer(
    help="Loket — chat-first, omnichannel service desk bot. Start with `loket run`.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
customers_app = typer.Typer(help="Customer records and their timelines.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(customers_app, name="customers")
console = Console()

# (module, attribute, command name) of feature command groups.
FEATURE_CLIS: list[tuple[str, str, str]] = [
    ("bot.bench_cli", "bench", "bench"),
    ("knowledge_base.cli", "app", "kb"),
    ("bot.channels.telegram_cli", "app", "telegram"),
    ("bot.channels.email_cli", "app", "email"),
    ("bot.flows.cli", "app", "flows"),
    ("bot.flows.cli", "chat", "chat"),
    ("bot.appointments.cli", "app", "appointments"),
    ("bot.api.cli", "app", "tokens"),
    ("agent_console.cli", "app", "agents"),
]


@app.command()
def run() -> None:
    """Run everything in one process (web, webhooks, console, router, dispatcher, scheduler).

    Embedded default: SQLite in ./loket.db, http://127.0.0.1:8080, demo flows and knowledge base loaded.
    """
    from bot.serve import run_process

    run_process("all")


@app.command()
def web() -> None:
    """Run the web process only (webhooks, web chat, console, API). Needs PostgreSQL + Redis to scale out."""
    from bot.serve import run_process

    run_process("web")


@app.command()
def worker() -> None:
    """Run a worker (router, dispatcher, scheduler). Run as many as needed on PostgreSQL."""
    from bot.serve import run_process

    run_process("worker")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest version (all features)."""
    from storage.schema import upgrade

    settings = settings_or_exit()

    async def go() -> None:
        engine = make_engine(settings.database_url)
        try:
            await check_database(engine)
            await upgrade(engine)
        finally:
            await engine.dispose()

    run_async(go())
    console.print(f"[green]database is up to date[/green] ({make_engine(settings.database_url).url.render_as_string()})")


@db_app.command("prune")
def db_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be deleted."),
) -> None:
    """Delete finished work-queue rows older than the retention settings (LOKET_RETAIN_*_DAYS).

    Done inbox items, sent outbox rows and delivered webhook events go after 30 days, failed ones after 90.

    Expired console sessions and day-old login attempts go too. Customer records, messages and timelines stay.

    `loket run` and `loket worker` do this every hour by themselves (LOKET_HOUSEKEEPING_INTERVAL_SECONDS).
    """
    from bot.housekeeping import policy_from
    from bot.retention import count, prune, rules

    settings = settings_or_exit()
    policy = policy_from(settings)

    async def go(engine: AsyncEngine) -> list[tuple[str, str, int]]:
        """(table, how long its finished rows are kept, rows due or deleted) per rule."""
        await check_database(engine)
        now = Clock().now()
        due = [(r, await count(engine, r)) for r in rules(policy, now)]
        if dry_run or not any(n for _, n in due):
            return [(r.name, r.kept, n) for r, n in due]
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            bars = {r.name: progress.add_task(r.name, total=n) for r, n in due if n}

            def advance(name: str, n: int) -> None:
                if name in bars:
                    progress.advance(bars[name], n)

            done = await prune(engine, policy, now, progress=advance)
        if done is None:
            console.print("[red]Another Loket process is pruning this database right now[/red] (the background "
                          "pass of `loket run` or `loket worker`); it deletes the same rows. Run this again when it "
                          "has finished, or see its progress in that process's log.")
            raise typer.Exit(1)
        return [(r.name, r.kept, done.get(r.name, 0)) for r, _ in due]

    table = Table(title="Would delete (dry run)" if dry_run else "Deleted")
    table.add_column("table")
    table.add_column("finished rows are kept")
    table.add_column("rows", justify="right")
    for name, kept, n in run_async(with_engine(settings, go)):
        table.add_row(name, kept, f"{n:,}")
    console.print(table)


@db_app.command("upkeep")
def db_upkeep(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show the tables and what is due."),
) -> None:
    """Analyse (and, where autovacuum is off, vacuum) Loket's PostgreSQL tables that need it.

    The rule is autovacuum's own: analyse a table once 50 + 10 % of its rows have changed.

    Where autovacuum is off, also vacuum it at 50 + 20 % dead rows or 1,000 + 20 % new ones.

    Where autovacuum is on, only a table it has never analysed is analysed here.

    `loket run` and `loket worker` do this every 15 s by themselves (LOKET_DB_UPKEEP_INTERVAL_SECONDS).
    """
    from storage.upkeep import due, run_upkeep, table_stats

    settings = settings_or_exit()

    async def go(engine: AsyncEngine) -> tuple[bool, list[Any], dict[str, str], bool]:
        """(SQLite?, the tables' statistics, what was done or is due per table, another process busy?)"""
        await check_database(engine)
        if is_sqlite(engine):
            return True, [], {}, False
        if dry_run:
            stats = await table_stats(engine)
            return False, stats, {t.table: f"due: {t.action}" for t in due(stats)}, False
        done = await run_upkeep(engine)
        after = await table_stats(engine)  # the tables as the pass left them (or as they are, if it was busy)
        if done is None:
            return False, after, {}, True
        return False, after, {d.task.table: f"{d.task.action} ({d.seconds * 1000:,.0f} ms)" for d in done}, False

    sqlite, stats, actions, busy = run_async(with_engine(settings, go))
    if sqlite:
        console.print("SQLite needs no upkeep: its planner uses the indexes without statistics, and freed pages "
                      "are reused.")
        return
    if not stats:
        console.print("[yellow]the database user owns none of Loket's tables, and only a table's owner may analyse "
                      "or vacuum it: run this as the user that ran `loket db upgrade`, or turn autovacuum on[/yellow]")
        raise typer.Exit(1)
    if busy:
        console.print("[yellow]another Loket process is running the upkeep pass right now; try again in a "
                      "moment[/yellow]")
        raise typer.Exit(1)
    off = [s.table for s in stats if not s.autovacuum]
    console.print("autovacuum is on for every table: Loket only makes a first analyse it has not made yet"
                  if not off else f"autovacuum is off for {len(off)} of {len(stats)} tables: Loket analyses and "
                  "vacuums them")
    table = Table(title="Upkeep (dry run)" if dry_run else "Upkeep", caption="tables with no rows are not listed")
    for col in ("table", "rows", "dead", "changed", "analysed", "action"):
        table.add_column(col, justify="right" if col in {"rows", "dead", "changed"} else "left")
    listed = [s for s in stats if s.live or s.dead or s.changed or s.table in actions]
    for s in listed:
        table.add_row(s.table, f"{s.live:,}", f"{s.dead:,}", f"{s.changed:,}", _ago(s.analyzed_at),
                      actions.get(s.table, ""))
    console.print(table if listed else "no table holds rows yet")
    if not actions:
        console.print("nothing was due")


def _ago(at: datetime | None) -> str:
    if at is None:
        return "never"
    seconds = (Clock().now() - at).total_seconds()
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 else (
        at.strftime("%Y-%m-%d %H:%M"))


@customers_app.command("show")
def customers_show(customer_id: int = typer.Argument(..., help="Customer id (see the console or the API).")) -> None:
    """Print a customer with identities and the whole timeline."""
    from storage.repositories import customer_timeline, customer_with_identities

    settings = settings_or_exit()

    async def go() -> tuple[object, list[dict[str, object]]]:
        engine = make_engine(settings.database_url)
        try:
            await check_database(engine)
            async with engine.connect() as conn:
                cust = await customer_with_identities(conn, customer_id)
                timeline = await customer_timeline(conn, customer_id) if cust else []
            return cust, timeline
        finally:
            await engine.dispose()

    result: Any = run_async(go())
    cust, timeline = result
    if cust is None:
        console.print(f"[red]no customer with id {customer_id}[/red]")
        raise typer.Exit(1)
    assert isinstance(cust, dict)
    console.print(f"[bold]Customer {cust['id']}[/bold] {cust['display_name'] or ''}  "
                  f"language={cust['language']} timezone={cust['timezone']} opted_out={cust['opted_out']}")
    idt = Table(title="Identities")
    for col in ("channel", "address", "verified", "unreachable"):
        idt.add_column(col)
    for i in cust["identities"]:
        idt.add_row(i["channel"], i["address"], str(i["verified"]), str(i["unreachable"]))
    console.print(idt)
    tl = Table(title=f"Timeline ({len(timeline)} touchpoints)")
    for col in ("time", "kind", "channel", "actor", "conversation", "details"):
        tl.add_column(col, overflow="fold")
    for tp in timeline:
        payload = tp["payload"] or {}
        detail = payload.get("text") or ", ".join(f"{k}={v}" for k, v in payload.items() if v not in (None, "", []))
        tl.add_row(str(tp["created_at"])[:19], str(tp["kind"]), str(tp["channel"] or ""), str(tp["actor"]),
                   str(tp["conversation_id"] or ""), str(detail)[:200])
    console.print(tl)


def _install_feature_clis() -> None:
    for module, attr, name in FEATURE_CLIS:
        sub = getattr(importlib.import_module(module), attr)
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=name)
        else:
            app.command(name)(sub)


_install_feature_clis()


def main() -> None:
    app(prog_name="loket")


if __name__ == "__main__":  # pragma: no cover
    main()
