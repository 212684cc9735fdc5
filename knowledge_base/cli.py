"""``loket kb …``: import articles, score the knowledge base, list the gaps."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Knowledge base: import articles, evaluate answers, find gaps.", no_args_is_help=True)
console = Console()


from bot.cli_support import run_async as _run  # noqa: E402
from bot.cli_support import settings_or_exit as _settings  # noqa: E402


async def _kb(settings: Any, migrate: bool = True) -> Any:
    from bot.clock import Clock
    from knowledge_base.service import KnowledgeBase
    from storage.db import check_database, make_engine
    from storage.schema import upgrade

    engine = make_engine(settings.database_url)
    await check_database(engine)
    if migrate:
        await upgrade(engine)
    return KnowledgeBase(engine, Clock(), settings.env)


@app.command("import")
def import_cmd(path: Path = typer.Argument(..., help="A folder of Markdown files with YAML front matter, "
                                                   "one Markdown file, or a CSV file.")) -> None:
    """Import articles; re-importing an id updates it (version + 1 when its content changed).

    Front matter fields: id, title, language (id|en), category, tags, questions (example questions),
    optional answer (short answer for chat; default: the first paragraph) and published.
    CSV columns: id,title,body,language[,answer,category,tags,questions,published] (lists separated by |).
    """
    settings = _settings()

    async def go() -> Any:
        kb = await _kb(settings)
        kb.live = False
        try:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=False) as progress:
                tasks: dict[str, Any] = {}

                def tick(stage: str, n: int, total: int) -> None:
                    if stage not in tasks:
                        label = "reading files" if stage == "parse" else "saving articles"
                        tasks[stage] = progress.add_task(label, total=total)
                    progress.update(tasks[stage], completed=n)

                return await kb.import_path(path, tick)
        finally:
            await kb.engine.dispose()

    res = _run(go())
    console.print(f"[green]{res.created} new, {res.updated} updated, {res.unchanged} unchanged[/green]; "
                  f"{len(res.rejected)} rejected; knowledge base version {res.version}")
    if res.rejected:
        table = Table(title="Rejected")
        table.add_column("file / row", overflow="fold")
        table.add_column("why", overflow="fold")
        for r in res.rejected:
            table.add_row(r.source, r.reason)
        console.print(table)
    if res.rejected and not res.imported:
        raise typer.Exit(1)


def _print_report(title: str, rep: Any) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rep.lines():
        table.add_row(k, v)
    console.print(table)


@app.command("eval")
def eval_cmd(
    file: Path | None = typer.Argument(None, help="CSV of text,article_id (article_id __none__ = no answer)."),
    train: Path | None = typer.Option(None, "--train", help="Labelled CSV to build a throwaway knowledge base."),
    test: Path | None = typer.Option(None, "--test", help="Labelled CSV to score (with --train)."),
    text_col: str = typer.Option("text", "--text-col", help="Column with the question."),
    label_col: str | None = typer.Option(None, "--label-col",
                                         help="Column with the label (default: article_id, or category with --train)."),
    shots: int | None = typer.Option(None, "--shots", help="Keep N training rows per label."),
    language: str | None = typer.Option(None, "--language", help="id or en (default: guessed from the texts)."),
    lexical: bool = typer.Option(False, "--lexical", help="Do not use semantic vectors even when installed."),
    target_precision: float = typer.Option(0.95, "--target-precision",
                                           help="With --train: precision the threshold must reach on held-out "
                                                "training rows."),
    tune: bool = typer.Option(False, "--tune", help="With --train: fine-tune the embedding model on the training "
                                                    "rows the calibration does not use, then evaluate with it "
                                                    "(needs loket[semantic]; minutes of CPU)."),
    tune_steps: int = typer.Option(150, "--tune-steps", help="With --tune: training steps of 32 pairs."),
    tune_seed: int = typer.Option(0, "--tune-seed", help="With --tune: seed for the order of the pairs (run a few "
                                                         "to see how much the figures move)."),
) -> None:
    """Score the knowledge base: accuracy, abstention, macro-F1, precision at coverage, latency.

    With --train, training rows labelled __none__ are not articles: they calibrate what to abstain on.
    """
    from knowledge_base.evaluation import (
        guess_language,
        keep_shots,
        read_labelled,
        report,
        score_rows,
        train_kb,
        tuning_docs,
    )
    from knowledge_base.semantic import load_embedder, model_path

    env = dict(os.environ)
    if lexical:
        env["LOKET_KB_SEMANTIC"] = "off"
    if train is not None or test is not None:
        if train is None or test is None or file is not None:
            console.print("[red]use either FILE, or --train TRAIN.csv --test TEST.csv[/red]")
            raise typer.Exit(2)
        col = label_col or "category"
        try:
            train_rows = keep_shots(read_labelled(train, text_col, col), shots)
            test_rows = read_labelled(test, text_col, col)
        except (OSError, ValueError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        lang = language or guess_language([t for t, _ in train_rows])
        tmp = tempfile.TemporaryDirectory(prefix="loket-tuned-") if tune else None
        if tmp is not None:
            if lexical:
                console.print("[red]--tune needs semantic vectors; drop --lexical[/red]")
                raise typer.Exit(2)
            _tune_with_progress(tuning_docs(train_rows, lang), Path(tmp.name), model_path(env, include_tuned=False),
                                tune_steps, tune_seed)
            env["LOKET_KB_MODEL"] = tmp.name
        embedder = load_embedder(env)
        with console.status(f"building a throwaway knowledge base from {len(train_rows)} rows"):
            trained = train_kb(train_rows, lang, embedder, target_precision=target_precision)
        _print_report(f"held-out part of {train.name} (threshold chosen here)", trained.held_out)
        scored = score_rows(trained.ranker, test_rows, lang)
        rep = report(scored, trained.threshold)
        rep.extra = {"labels": len(trained.ranker.docs), "training rows": len(train_rows),
                     "shots": shots or "all", "language": lang,
                     "semantic": _semantic_state(trained.ranker, lang, embedder),
                     "index build": f"{trained.build_seconds:.1f} s"}
        if tmp is not None:
            rep.extra["embedding model"] = f"tuned here ({tune_steps} steps, seed {tune_seed})"
        _print_report(f"{test.name}", rep)
        return
    if file is None:
        console.print("[red]give a FILE, or --train and --test[/red]")
        raise typer.Exit(2)
    settings = _settings()
    try:
        rows = read_labelled(file, text_col, label_col or "article_id")
    except (OSError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc

    async def go() -> Any:
        settings.env.update({k: v for k, v in env.items() if k.startswith("LOKET_KB")})
        kb = await _kb(settings)
        kb.env = env | settings.env
        try:
            await kb.reload(force=True)
        finally:
            await kb.engine.dispose()
        return kb

    kb = _run(go())
    if not kb.ranker.docs:
        console.print("[red]the knowledge base is empty: run `loket kb import PATH` first[/red]")
        raise typer.Exit(1)
    lang = language or guess_language([t for t, _ in rows])
    scored = score_rows(kb.ranker, rows, lang)
    rep = report(scored, kb.answer_threshold)
    rep.extra = {"articles": len(kb.ranker.docs), "language": lang,
                 "semantic": _semantic_state(kb.ranker, lang, kb.ranker.embedder)}
    _print_report(f"{file.name} against the knowledge base (version {kb.version})", rep)


def _tune_with_progress(docs: list[Any], out: Path, base: str | None, steps: int, seed: int) -> Any:
    from knowledge_base.tuning import TuneError
    from knowledge_base.tuning import tune as run_tune

    if base is None:
        console.print("[red]no embedding model to tune: pip install 'loket[semantic]' (or set LOKET_KB_MODEL)[/red]")
        raise typer.Exit(1)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("tuning the embedding model", total=steps, loss="-")

            def tick(n: int, total: int, loss: float) -> None:
                progress.update(task, completed=n, total=total, loss=f"{loss:.3f}")

            return run_tune(docs, out, base, steps=steps, seed=seed, progress=tick)
    except TuneError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command("tune")
def tune_cmd(
    out: Path | None = typer.Option(None, "--out", help="Folder for the tuned model (default: "
                                                        "LOKET_DATA_DIR/kb-model, which search then uses)."),
    steps: int = typer.Option(150, "--steps", help="Training steps of 32 pairs of example questions."),
    seed: int = typer.Option(0, "--seed", help="Seed for the order of the pairs."),
) -> None:
    """Fine-tune the embedding model on the published articles' example questions.

    Worth it when articles have few example questions (on BANKING77 with 10 per intent it lifted accuracy by
    about 1.5 points); it takes a few minutes of one CPU core per 150 steps. The tuned copy is written to
    LOKET_DATA_DIR/kb-model, which search uses from the next start (an explicit LOKET_KB_MODEL wins); run it
    again after large changes to the articles. Only languages with vectors are used (LOKET_KB_SEMANTIC_LANGUAGES,
    default en).
    """
    from knowledge_base.ranker import semantic_languages
    from knowledge_base.semantic import model_path, tuned_model_dir

    settings = _settings()

    async def go() -> Any:
        from knowledge_base import store

        kb = await _kb(settings)
        try:
            async with kb.engine.connect() as conn:
                return await store.published_docs(conn)
        finally:
            await kb.engine.dispose()

    langs = semantic_languages(settings.env)
    docs = [d for d in _run(go()) if d.language in langs]
    if not docs:
        console.print(f"[red]no published articles in {', '.join(sorted(langs))}: import some with "
                      "`loket kb import PATH` first[/red]")
        raise typer.Exit(1)
    target = out or Path(tuned_model_dir(settings.env))
    base = model_path(settings.env, include_tuned=False)
    res = _tune_with_progress(docs, target, base, steps, seed)
    console.print(f"[green]tuned on {res.pairs:,} pairs from {res.articles} articles in {res.seconds:.0f} s "
                  f"(loss {res.first_loss:.3f} → {res.last_loss:.3f}); saved to {target}[/green]")
    if out is not None:
        console.print(f"use it with LOKET_KB_MODEL={target}, then restart Loket")
    else:
        console.print("restart Loket to search with it (LOKET_KB_MODEL, when set, still wins)")


def _semantic_state(ranker: Any, lang: str, embedder: Any) -> str:
    index = ranker.indexes.get(lang)
    if index is not None and index.unit_emb is not None:
        return f"on, tuned model ({embedder.path})" if getattr(embedder, "tuned", False) else "on"
    if embedder is not None:
        return f"off for '{lang}' (LOKET_KB_SEMANTIC_LANGUAGES)"
    return "off (model not installed or LOKET_KB_SEMANTIC=off)"


@app.command("gaps")
def gaps_cmd(
    days: int = typer.Option(30, "--days", help="Look at the last N days."),
    min_count: int = typer.Option(1, "--min-count", help="Only groups asked at least this often."),
    limit: int = typer.Option(30, "--limit", help="Show at most this many groups."),
) -> None:
    """Questions the bot could not answer (or answered unhelpfully), grouped by similarity, most asked first."""
    from knowledge_base.gaps import group_gaps
    from knowledge_base.store import gap_queries

    settings = _settings()

    async def go() -> list[dict[str, Any]]:
        kb = await _kb(settings)
        try:
            async with kb.engine.connect() as conn:
                return await gap_queries(conn, since=kb.clock.now() - timedelta(days=days))
        finally:
            await kb.engine.dispose()

    rows = _run(go())
    groups = [g for g in group_gaps(rows) if g.count >= min_count][:limit]
    if not groups:
        console.print(f"[green]no unanswered questions in the last {days} days[/green]")
        return
    table = Table(title=f"Knowledge base gaps, last {days} days ({len(rows)} questions)")
    table.add_column("count", justify="right")
    table.add_column("question (example)", overflow="fold")
    table.add_column("similar", overflow="fold")
    table.add_column("outcomes")
    table.add_column("closest article")
    for g in groups:
        table.add_row(str(g.count), g.example, " | ".join(g.others[:3]),
                      ", ".join(f"{k} {v}" for k, v in sorted(g.outcomes.items())), g.closest or "-")
    console.print(table)
