"""Scale-out benchmark (issue 10): throughput and p99 with 1 vs 2 workers on PostgreSQL + Redis, and RSS with
100,000 open conversations.

    .venv/bin/python bench/scaleout_bench.py throughput [--duration 15 --concurrency 64]
    .venv/bin/python bench/scaleout_bench.py rss [--conversations 100000]
    .venv/bin/python bench/scaleout_bench.py serve --workers N   # what the harness starts (1 web + N workers)

``throughput`` runs ``../shared/bench/harness.py run`` once per worker count with the Telegram webhook load
(closed loop; each update done when its sendMessage reaches the harness's fake Bot API). The processes are not
pinned: the point is whether a second worker uses the second core. Results: bench/results/scaleout.jsonl.
``rss`` seeds the conversations with direct inserts, starts a web and a worker, drives 2,000 updates through
them and samples each process's RSS. Figures go to bench/SCALEOUT_RESULTS.md (written by hand from the output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from e2e import pg_url, recreate_pg_database  # the benchmark database, as bench/e2e.py makes it

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench"
RESULTS = ROOT / "bench" / "results"
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DB = "loket_scaleout"
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


# The load's chats are the first seeded conversations, which are with the bot (the rest are a mix of bot,
# queued, assigned and waiting-for-customer, as in a busy desk): a queued conversation's message gets no bot reply.
LOAD_CHATS = 5000


def base_env(port: int) -> dict[str, str]:
    return {**os.environ, "LOKET_HOST": "127.0.0.1", "LOKET_PORT": str(port),
            "LOKET_PUBLIC_URL": f"http://127.0.0.1:{port}", "LOKET_DEMO": "false", "LOKET_LOG_LEVEL": "WARNING",
            "LOKET_SECRET_KEY": "bench-secret-key-0123456789abcdefghijkl", "LOKET_DATA_DIR": "/tmp/loket-bench",
            "TELEGRAM_MAX_PER_SECOND": "1000000", "TELEGRAM_PER_CHAT_INTERVAL": "0",
            "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(workers: int) -> None:
    """1 web (on $PORT) + N workers until SIGINT/SIGTERM; then stop them gracefully."""
    port = int(os.environ.get("PORT", "8081"))
    env = base_env(port)
    subprocess.run([PY, "-m", "bot.cli", "db", "upgrade"], env=env, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    procs = [subprocess.Popen([PY, "-m", "bot.cli", "web"], env=env, cwd=ROOT)]
    for _ in range(workers):
        # each worker serves its own /metrics and health checks, so each needs its own port
        procs.append(subprocess.Popen([PY, "-m", "bot.cli", "worker"], cwd=ROOT, env={
            **env, "LOKET_PORT": str(free_port()), "LOKET_WORKER_METRICS_PORT": str(free_port())}))
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def harness_run(args: argparse.Namespace, out: Path, name: str, server_cmd: str, *extra: str) -> None:
    """One configuration through ``../shared/bench/harness.py run``: the same load for Loket and the peer."""
    cmd = [PY, str(SHARED / "harness.py"), "run", "--name", name, "--concurrency", str(args.concurrency),
           "--warmup", str(args.warmup), "--duration", str(args.duration), "--aux-proc", "postgres",
           "--start-timeout", "90", "--port", str(free_port()), "--fake-port", str(free_port()),
           "--server-log", str(RESULTS / f"{name}.log"), "--out", str(out), "--server-cmd", server_cmd, *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def throughput(args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "scaleout.jsonl"
    for workers in args.workers:
        recreate_pg_database(DB)
        harness_run(args, out, f"loket_pg_redis_{workers}w",
                    f"{PY} {ROOT / 'bench' / 'scaleout_bench.py'} serve --workers {workers}",
                    "--path", "/webhooks/telegram", "--env", f"DATABASE_URL={pg_url(DB)}",
                    "--env", f"REDIS_URL={REDIS}", "--env", f"LOKET_REDIS_PREFIX=bench{workers}:")
    if args.peer:
        # the reference: the minimal durable PostgreSQL design of ../shared/bench, same load, same run
        harness_run(args, out, "peer_d_durable_pg", f"{PY} {SHARED / 'peers' / 'durable_pg.py'}")
    subprocess.run([PY, str(SHARED / "harness.py"), "table", str(out)], cwd=ROOT)


async def seed(url: str, n: int) -> None:
    from sqlalchemy import text

    from bot.config import normalize_database_url
    from storage.db import make_engine
    from storage.schema import upgrade

    engine = make_engine(normalize_database_url(url))
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO customers (id, display_name, language, timezone, tags, attributes, opted_out, created_at) "
            "SELECT g, 'Customer ' || g, 'id', 'Asia/Jakarta', '[]', '{}', false, now() "
            "FROM generate_series(1, :n) g"), {"n": n})
        await conn.execute(text(
            "INSERT INTO identities (id, customer_id, channel, address, verified, unreachable, meta, created_at, "
            "last_inbound_at) SELECT g, g, 'telegram', (900000000 + g)::text, false, false, '{}', now(), now() "
            "FROM generate_series(1, :n) g"), {"n": n})
        await conn.execute(text(
            "INSERT INTO conversations (id, customer_id, identity_id, channel, state, priority, labels, meta, "
            "created_at, updated_at, last_message_at) SELECT g, g, g, 'telegram', "
            "CASE WHEN g <= :bot THEN 'bot' ELSE (ARRAY['bot','queued','assigned','pending_customer'])[1 + g % 4] END, "
            "'normal', '[]', '{}', now(), now(), "
            "now() FROM generate_series(1, :n) g"), {"n": n, "bot": LOAD_CHATS})
        for table in ("customers", "identities", "conversations"):
            await conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), :n)"), {"n": n})
    await engine.dispose()


def rss(args: argparse.Namespace) -> None:
    import psutil

    recreate_pg_database(DB)
    t0 = time.monotonic()
    asyncio.run(seed(pg_url(DB), args.conversations))
    print(f"seeded {args.conversations} open conversations in {time.monotonic() - t0:.1f}s", flush=True)
    port, fake_port = free_port(), free_port()
    env = {**base_env(port), "DATABASE_URL": pg_url(DB), "REDIS_URL": REDIS, "LOKET_REDIS_PREFIX": "rss:",
           "TELEGRAM_BOT_TOKEN": "1:BENCH", "TELEGRAM_WEBHOOK_SECRET": "S3cret_x",
           "TELEGRAM_API_BASE": f"http://127.0.0.1:{fake_port}"}
    if args.kb:  # a desk has articles: the worker imports the demo's 40 and both processes index them
        env["LOKET_KB"] = str(ROOT / "knowledge_base" / "demo")
    web = subprocess.Popen([PY, "-m", "bot.cli", "web"], env=env, cwd=ROOT)
    worker = subprocess.Popen([PY, "-m", "bot.cli", "worker"], env={**env, "LOKET_PORT": str(free_port())}, cwd=ROOT)
    import urllib.request

    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(3)  # the worker's start-up (schema check, KB index) after the web is ready
    harness = subprocess.Popen([PY, str(SHARED / "harness.py"), "load", "--url",
                                f"http://127.0.0.1:{port}/webhooks/telegram", "--secret", "S3cret_x",
                                "--token", "1:BENCH", "--fake-port", str(fake_port), "--concurrency", "32",
                                "--max-updates", str(args.updates), "--duration", "60", "--warmup", "0",
                                "--chats", str(LOAD_CHATS), "--chat-base", "900000001", "--start-timeout", "60",
                                "--reply-timeout", "30"],
                               cwd=ROOT)
    procs = {"web": psutil.Process(web.pid), "worker": psutil.Process(worker.pid)}
    peak = {k: 0.0 for k in procs}
    samples: dict[str, list[float]] = {k: [] for k in procs}
    try:
        while harness.poll() is None:
            for k, p in procs.items():
                mb = p.memory_info().rss / 2**20
                peak[k] = max(peak[k], mb)
                samples[k].append(mb)
            time.sleep(0.5)
        time.sleep(2)
        after = {k: p.memory_info().rss / 2**20 for k, p in procs.items()}
    finally:
        for p in (web, worker):
            p.send_signal(signal.SIGTERM)
        for p in (web, worker):
            p.wait(30)
    report = {"conversations": args.conversations, "updates": args.updates, "knowledge_base": args.kb,
              "rss_mb_peak": {k: round(v, 1) for k, v in peak.items()},
              "rss_mb_first_sample": {k: round(v[0], 1) for k, v in samples.items() if v},
              "rss_mb_after_load": {k: round(v, 1) for k, v in after.items()}}
    print("RSS " + json.dumps(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "scaleout_rss.jsonl", "a") as f:
        f.write(json.dumps(report) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--workers", type=int, default=1)
    t = sub.add_parser("throughput")
    t.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    t.add_argument("--duration", type=float, default=15)
    t.add_argument("--warmup", type=float, default=3)
    t.add_argument("--concurrency", type=int, default=64)
    t.add_argument("--no-peer", dest="peer", action="store_false", help="skip the durable_pg reference peer")
    r = sub.add_parser("rss")
    r.add_argument("--conversations", type=int, default=100_000)
    r.add_argument("--updates", type=int, default=2000)
    r.add_argument("--no-kb", dest="kb", action="store_false",
                   help="no knowledge base (by default the demo's 40 articles are imported and indexed)")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args.workers)
    elif args.cmd == "throughput":
        throughput(args)
    else:
        rss(args)


if __name__ == "__main__":
    main()
