"""``loket appointments …``: import a CSV, print the report, set provider hours and service policies."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="Appointments and reminders: import, report, provider hours, service policies.",
                  no_args_is_help=True)
console = Console()


def _settings():  # type: ignore[no-untyped-def]
    from bot.cli_support import settings_or_exit

    return settings_or_exit()


def _engine(settings):  # type: ignore[no-untyped-def]
    from storage.db import make_engine

    return make_engine(settings.database_url)


def _save_by_name(table: Any, name: str, new_row: dict[str, Any], changes: dict[str, Any]) -> None:
    """Insert the row named ``name`` (``new_row``) or, when one exists, apply ``changes`` to it."""
    from sqlalchemy import select, update

    from bot.cli import run_async
    from bot.clock import Clock

    settings = _settings()

    async def go() -> None:
        engine = _engine(settings)
        try:
            async with engine.begin() as conn:
                row = (await conn.execute(select(table.c.id).where(table.c.name == name))).first()
                if row is None:
                    await conn.execute(table.insert().values(name=name, created_at=Clock().now(), **new_row))
                elif changes:
                    await conn.execute(update(table).where(table.c.id == row[0]).values(**changes))
        finally:
            await engine.dispose()

    run_async(go())


@app.command("import")
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                help="CSV with the header external_id,name,phone,email,telegram_chat_id,service,"
                                     "provider,location,start,timezone,channel,language"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and report without saving anything."),
) -> None:
    """Import appointments; re-importing an external_id updates it. Exit code 1 if any row was rejected."""
    from bot.appointments.importer import import_csv, read_rows
    from bot.appointments.service import Policy
    from bot.clock import Clock
    from storage.db import check_database
    from storage.schema import upgrade

    settings = _settings()
    policy = Policy.from_env(settings.env)
    total = len(read_rows(file.read_text(encoding="utf-8-sig", errors="replace"))[1])

    async def go():  # type: ignore[no-untyped-def]
        engine = _engine(settings)
        try:
            await check_database(engine)
            await upgrade(engine)
            with Progress(TextColumn("[bold]importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=console, transient=False) as progress:
                task = progress.add_task("rows", total=total)
                return await import_csv(engine, file, Clock().now(), policy,
                                        progress=lambda n: progress.advance(task, n), dry_run=dry_run)
        finally:
            await engine.dispose()

    from bot.cli import run_async

    report = run_async(go())
    if report.file_error:  # type: ignore[attr-defined]
        console.print(f"[red]{file}: {report.file_error}[/red]")  # type: ignore[attr-defined]
        raise typer.Exit(2)
    r = report
    summary = (f"{r.total} rows: [green]{r.created} created[/green], {r.updated} updated, "  # type: ignore[attr-defined]
               f"{r.rescheduled} rescheduled, {r.unchanged} unchanged, "  # type: ignore[attr-defined]
               f"[red]{len(r.errors)} rejected[/red]")  # type: ignore[attr-defined]
    if dry_run:
        summary += " (dry run: nothing saved)"
    console.print(summary)
    if r.errors:  # type: ignore[attr-defined]
        table = Table(title="Rejected rows (nothing was saved for them)")
        table.add_column("line", justify="right")
        table.add_column("external_id")
        table.add_column("reasons")
        for e in r.errors:  # type: ignore[attr-defined]
            table.add_row(str(e.line), e.external_id or "—", "\n".join(e.reasons))
        console.print(table)
        raise typer.Exit(1)


@app.command("report")
def report(
    months: int = typer.Option(6, help="How many calendar months, ending with this one."),
    timezone: str = typer.Option("Asia/Jakarta", help="Timezone that decides which month an appointment is in."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Confirmations, cancellations, no-shows and patients per month; how the reminders went."""
    from bot.appointments.reports import monthly, reminder_summary, status_summary
    from bot.clock import Clock

    settings = _settings()

    async def go():  # type: ignore[no-untyped-def]
        engine = _engine(settings)
        try:
            now = Clock().now()
            async with engine.connect() as conn:
                rows = await monthly(conn, now, months, timezone)
                start = now - timedelta(days=31 * months)
                return (rows, await status_summary(conn, start, now + timedelta(days=365)),
                        await reminder_summary(conn, start, now + timedelta(days=365)))
        finally:
            await engine.dispose()

    from bot.cli import run_async

    result: Any = run_async(go())
    rows, summary, rem = result
    if as_json:
        console.print_json(json.dumps({"months": rows, "summary": summary, "reminders": rem}))
        return
    table = Table(title="Appointments per month")
    for col in ("month", "appointments", "patients", "confirmed", "cancelled", "no_show", "done"):
        table.add_column(col, justify="right" if col != "month" else "left")
    for r in rows:
        table.add_row(r["month"], *(str(r[k]) for k in ("appointments", "patients", "confirmed", "cancelled",
                                                         "no_show", "done")))
    console.print(table)
    console.print(f"confirmation rate {summary['confirmation_rate']:.0%}, no-show rate {summary['no_show_rate']:.0%}; "
                  f"reminders: {rem['by_status']} by channel {rem['by_channel']}, answered {rem['answer_rate']:.0%}, "
                  f"fallbacks {rem['fallbacks']}")


@app.command("provider-hours")
def provider_hours(
    name: str = typer.Argument(..., help="Provider name as used in the CSV."),
    hours: str = typer.Argument(..., help='Weekly hours as JSON, e.g. \'{"mon": [["08:00","12:00"]], "sat": []}\''),
    timezone: str = typer.Option(None, help="IANA timezone of the provider (default: keep)."),
    location: str = typer.Option(None, help="Default location shown in reminders."),
) -> None:
    """Set a provider's working hours (used for free slots when a customer reschedules)."""
    from bot.appointments.models import providers_t
    from bot.appointments.service import AppointmentError, resolve_timezone, validate_hours

    try:
        clean = validate_hours(json.loads(hours))
        tz = resolve_timezone(timezone) if timezone else None
    except (json.JSONDecodeError, AppointmentError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    _save_by_name(
        providers_t, name,
        {"location": location or "", "timezone": tz or "Asia/Jakarta", "working_hours": clean},
        {"working_hours": clean, **({"timezone": tz} if tz else {}),
         **({"location": location} if location is not None else {})},
    )
    console.print(f"[green]{name}[/green]: hours saved")


@app.command("service")
def service(
    name: str = typer.Argument(..., help="Service name as used in the CSV."),
    duration: int = typer.Option(None, help="Duration in minutes."),
    stages: str = typer.Option(None, help='Reminder stages, e.g. "48h,24h,2h" ("" = the default policy).'),
) -> None:
    """Set a service's duration and reminder stages."""
    from bot.appointments.models import services_t
    from bot.appointments.service import AppointmentError, parse_stages

    try:
        parsed = list(parse_stages(stages)) if stages is not None else None
    except AppointmentError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    changes: dict[str, Any] = {}
    if duration is not None:
        changes["duration_minutes"] = duration
    if stages is not None:
        changes["reminder_stages"] = parsed or None
    _save_by_name(services_t, name, {"duration_minutes": duration or 30, "reminder_stages": parsed or None}, changes)
    console.print(f"[green]{name}[/green]: saved (new and moved appointments use it)")
