"""End-to-end benchmark: Loket's full router path beside the reference peers, in one run.

Every configuration goes through ``../shared/bench/harness.py run`` with the same load (closed loop,
Telegram webhook updates, each done when its sendMessage reaches the fake Bot API), the server pinned to
CPU 0 and the harness to CPU 1, so the figures are comparable and quoted as ratios.

    .venv/bin/python bench/e2e.py                      # Loket (SQLite, PostgreSQL) + peers, writes BENCHMARKS data
    .venv/bin/python bench/e2e.py --only loket         # just Loket
    .venv/bin/python bench/e2e.py --duration 20 --reps 2 --concurrency 16 64

Results are appended to bench/results/e2e.jsonl and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench"
RESULTS = ROOT / "bench" / "results"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
PG_BENCH_DB = "loket_bench"


def pg_url(db: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{db}"


def recreate_pg_database(db: str) -> None:
    """Drop and create the benchmark database with asyncpg (no psql needed)."""
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{db}"')
        finally:
            await conn.close()

    asyncio.run(go())


def configs(py: str, only: str | None) -> list[tuple[str, list[str]]]:
    peers = SHARED / "peers"
    loket = str(ROOT / "bench" / "loket_server.sh")
    sqlite_path = RESULTS / "loket_bench.sqlite3"
    all_configs: list[tuple[str, list[str]]] = [
        ("loket_sqlite", ["--server-cmd", loket, "--path", "/webhooks/telegram",
                          "--env", f"DATABASE_URL=sqlite:///{sqlite_path}"]),
        ("loket_pg", ["--server-cmd", loket, "--path", "/webhooks/telegram",
                      "--env", f"DATABASE_URL={pg_url(PG_BENCH_DB)}"]),
        ("peer_e_durable_sqlite", ["--server-cmd", f"{py} {peers / 'durable_sqlite.py'}",
                                   "--env", f"SQLITE_PATH={RESULTS / 'peer_durable.sqlite3'}"]),
        ("peer_d_durable_pg", ["--server-cmd", f"{py} {peers / 'durable_pg.py'}"]),
        ("peer_b_aiogram", ["--server-cmd", f"{py} {peers / 'aiogram_peer.py'}"]),
        ("peer_a_bare_aiohttp", ["--server-cmd", f"{py} {peers / 'bare_aiohttp.py'}"]),
    ]
    return [c for c in all_configs if not only or only in c[0]]


def prepare(name: str) -> None:
    if name == "loket_sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(str(RESULTS / "loket_bench.sqlite3") + suffix).unlink(missing_ok=True)
    elif name == "loket_pg":
        recreate_pg_database(PG_BENCH_DB)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="run configurations whose name contains this")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64])
    ap.add_argument("--duration", type=float, default=12)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0, help="open loop at this rate (for latency at a fixed load)")
    ap.add_argument("--out", default=str(RESULTS / "e2e.jsonl"))
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "logs").mkdir(exist_ok=True)
    py = sys.executable
    harness = str(SHARED / "harness.py")
    for rep in range(1, args.reps + 1):
        for conc in args.concurrency:
            for name, extra in configs(py, args.only):
                prepare(name)
                cmd = [py, harness, "run", "--name", name, "--rep", str(rep), "--concurrency", str(conc),
                       "--warmup", str(args.warmup), "--duration", str(args.duration), "--server-cpus", "0",
                       "--harness-cpus", "1", "--aux-proc", "postgres", "--start-timeout", "60",
                       "--server-log", str(RESULTS / "logs" / f"{name}.log"), "--out", args.out, *extra]
                if args.rate:
                    cmd += ["--rate", str(args.rate)]
                print(f"== {name} c={conc} rep={rep}", flush=True)
                t0 = time.monotonic()
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
                tail = (proc.stdout.strip().splitlines() or [""])[-1][:300]
                print(f"   {time.monotonic() - t0:.0f}s exit={proc.returncode} {tail}", flush=True)
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
    subprocess.run([py, harness, "table", args.out], cwd=ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
