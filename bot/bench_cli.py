"""``loket bench``: the end-to-end benchmark beside the reference peers (bench/e2e.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent


def bench(
    only: str = typer.Option("", help="Run only configurations whose name contains this (e.g. loket, peer)."),
    duration: float = typer.Option(12.0, help="Measured seconds per configuration."),
    warmup: float = typer.Option(3.0, help="Warm-up seconds before measuring."),
    reps: int = typer.Option(1, help="Repetitions of the whole matrix (interleaved)."),
    concurrency: list[int] = typer.Option([64], help="Closed-loop in-flight updates; repeat for several."),
) -> None:
    """Replies/s and p50/p99 latency from webhook to dispatched reply, Loket beside the peers in one run.

    Needs a source checkout with ../shared/bench beside it; writes bench/results/e2e.jsonl.
    """
    script = ROOT / "bench" / "e2e.py"
    if not script.exists() or not (ROOT.parent / "shared" / "bench" / "harness.py").exists():
        typer.echo("loket bench runs from a source checkout with ../shared/bench beside it (see BENCHMARKS.md)",
                   err=True)
        raise typer.Exit(2)
    args = [sys.executable, str(script), "--duration", str(duration), "--warmup", str(warmup),
            "--reps", str(reps), "--concurrency", *[str(c) for c in concurrency]]
    if only:
        args += ["--only", only]
    raise typer.Exit(subprocess.call(args, cwd=ROOT))
