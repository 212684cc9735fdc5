"""Knowledge-base quality and speed benchmarks (not tests). Reads datasets from ../shared/datasets.

    .venv/bin/python bench/kb_bench.py [--lexical] [--only banking,clinc,xsid,speed] [--limit N] [--tune [STEPS]]
    .venv/bin/python bench/kb_bench.py --write-split DIR     # the BANKING77 split as CSVs for `loket kb eval`

BANKING77 (train.csv only): split 80/20 with a fixed seed; the 80 % builds the knowledge base (its own
held-out 20 % picks the calibration and threshold, as `loket kb eval --train` does), the 20 % is the test.
CLINC150: in-scope train rows build the KB, a held-out part of in-scope rows plus the `oos_train` rows test
abstention. xSID Indonesian (300 rows): 5-fold cross-validation. Speed: lexical search over 10,000 articles.
With --tune (BANKING77 only), each knowledge base first fine-tunes the model on the rows its calibration does not
use, as `loket kb eval --train … --tune` does (knowledge_base.tuning).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from knowledge_base.evaluation import (  # noqa: E402
    NONE,
    keep_shots,
    report,
    score_rows,
    stratified_split,
    train_kb,
    tuning_docs,
)
from knowledge_base.ranker import Doc, LanguageIndex  # noqa: E402
from knowledge_base.semantic import load_embedder, model_path  # noqa: E402
from knowledge_base.tuning import STEPS, tune  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"


def clear_cache(embedder: object) -> None:
    cache = getattr(embedder, "_cache", None)
    if cache is not None:
        cache.clear()


def tuned(embedder: object, train: list[tuple[str, str]], steps: int | None, out: Path) -> tuple[object, str]:
    """The embedder to build with: the given one, or (with ``steps``) a copy tuned on ``train``'s fit part."""
    if not steps or embedder is None:
        return embedder, ""
    t0 = time.perf_counter()
    res = tune(tuning_docs(train, "en"), out, model_path({}, include_tuned=False) or "", steps=steps)
    tuned_embedder = load_embedder({"LOKET_KB_MODEL": str(out)})
    return tuned_embedder, (f"; tuned {res.steps} steps, {res.pairs:,} pairs in {time.perf_counter() - t0:.0f} s "
                            f"(loss {res.first_loss:.2f} → {res.last_loss:.2f})")


def banking_split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rows = [(r["text"], r["category"]) for r in csv.DictReader((DATA / "banking77" / "train.csv").open())]
    return stratified_split(rows, 0.2, seed=77)


def write_split(folder: Path) -> None:
    """The BANKING77 split as two CSVs, so that `loket kb eval --train … --test …` scores exactly what this does."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in zip(("banking77_train.csv", "banking77_test.csv"), banking_split(), strict=True):
        with (folder / name).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "category"])
            w.writerows(part)
        print(f"wrote {folder / name} ({len(part):,} rows)")


def banking(embedder: object, limit: int | None, tune_steps: int | None = None) -> list[str]:
    train, test = banking_split()
    if limit:
        random.Random(1).shuffle(test)
        test = test[:limit]
    out = [f"BANKING77: {len(train)} train rows, {len(test)} held-out test rows, 77 intents"]
    for shots in (None, 10):
        tr = keep_shots(train, shots)
        with tempfile.TemporaryDirectory(prefix="kb-bench-tuned-") as tmp:
            emb, tuning = tuned(embedder, tr, tune_steps, Path(tmp))
            t0 = time.perf_counter()
            kb = train_kb(tr, "en", emb)  # type: ignore[arg-type]
        build = time.perf_counter() - t0
        clear_cache(emb)  # test queries are encoded inside the timed search, never ahead of it
        rep = report(score_rows(kb.ranker, test, "en"), kb.threshold)
        label = "full" if shots is None else f"{shots}-shot"
        pac = ", ".join(f"{int(c * 100)}%: {p:.2%}" for c, p in rep.precision_at_coverage.items())
        tokens = kb.ranker.indexes["en"].tokens
        late = f"; {tokens.size:,} late-interaction vectors ({tokens.vectors.nbytes / 1e6:.0f} MB)" if tokens else ""
        out.append(f"  {label}: accuracy {rep.accuracy:.2%}; precision at coverage {pac}; threshold "
                   f"{rep.threshold:.3f} → coverage {rep.coverage_at_threshold:.2%}, precision "
                   f"{rep.precision_at_threshold:.2%}; latency p50 {rep.latency_p50_ms:.1f} ms, p99 "
                   f"{rep.latency_p99_ms:.1f} ms; build {build:.0f} s{late}{tuning}")
        print(out[-1], flush=True)
    return out


def clinc(embedder: object, limit: int | None) -> list[str]:
    data = json.loads((DATA / "clinc150" / "clinc150_train.json").read_text())
    rows = [(t, lab) for t, lab in data["train"]]
    oos = [(t, NONE) for t, _ in data["oos_train"]]
    random.Random(4).shuffle(oos)
    oos_cal, oos_test = oos[: len(oos) // 2], oos[len(oos) // 2:]  # half calibrates (train side), half tests
    train, held = stratified_split(rows, 0.2, seed=150)
    n = limit or 1000
    random.Random(2).shuffle(held)
    test = held[:n] + oos_test[: max(1, n // 5)]
    kb = train_kb(train + oos_cal, "en", embedder)  # type: ignore[arg-type]
    clear_cache(embedder)
    rep = report(score_rows(kb.ranker, test, "en"), kb.threshold)
    line = (f"CLINC150: {len(train)} train rows (150 intents) + {len(oos_cal)} oos_train rows for calibration; test {rep.n_answerable} in-scope + {rep.n_none} oos: "
            f"accuracy {rep.accuracy:.2%}, oos abstention {rep.abstention:.2%} at threshold {rep.threshold:.3f} "
            f"(in-scope coverage {rep.coverage_at_threshold:.2%}, precision {rep.precision_at_threshold:.2%}), "
            f"macro-F1 {rep.macro_f1:.3f}")
    print(line, flush=True)
    return [line]


def xsid(embedder: object) -> list[str]:
    rows = [(r["text"], r["intent"]) for r in csv.DictReader((DATA / "xsid_id" / "id_valid.csv").open())]
    rng = random.Random(5)
    rng.shuffle(rows)
    folds = 5
    accs = []
    for f in range(folds):
        test = rows[f::folds]
        train = [r for i, r in enumerate(rows) if i % folds != f]
        known = {lab for _, lab in train}
        test = [r for r in test if r[1] in known]
        kb = train_kb(train, "id", embedder)  # type: ignore[arg-type]
        rep = report(score_rows(kb.ranker, test, "id"), kb.threshold)
        accs.append(rep.accuracy)
    line = (f"xSID Indonesian: {len(rows)} rows, {len({lab for _, lab in rows})} intents, {folds}-fold CV accuracy "
            f"{np.mean(accs):.2%} (folds: {', '.join(f'{a:.1%}' for a in accs)})")
    print(line, flush=True)
    return [line]


def speed() -> list[str]:
    rng = random.Random(3)
    words = [w.strip(",.") for w in (ROOT / "knowledge_base" / "demo").joinpath("id", "toko-retur.md").read_text().split()]
    vocab = sorted({w.lower() for w in words if w.isalpha()}) + [f"produk{i}" for i in range(3000)]
    docs = []
    for i in range(10_000):
        body = " ".join(rng.choice(vocab) for _ in range(120))
        qs = tuple(" ".join(rng.choice(vocab) for _ in range(6)) for _ in range(3))
        docs.append(Doc(f"a{i}", "id", " ".join(rng.choice(vocab) for _ in range(5)), body, qs))
    t0 = time.perf_counter()
    index = LanguageIndex(docs, "id", None, learn=False)
    build = time.perf_counter() - t0
    queries = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 8))) for _ in range(500)]
    lat = []
    for q in queries:
        t = time.perf_counter()
        index.search(q, 5, lexical_only=True)
        lat.append((time.perf_counter() - t) * 1000)
    full = []
    for q in queries[:200]:
        t = time.perf_counter()
        index.search(q, 5)
        full.append((time.perf_counter() - t) * 1000)
    line = (f"Lexical search over 10,000 articles (30,000 example questions): BM25 p50 {np.percentile(lat, 50):.2f} ms, "
            f"p99 {np.percentile(lat, 99):.2f} ms; full lexical ranking (BM25 + TF-IDF evidence) p50 "
            f"{np.percentile(full, 50):.2f} ms, p99 {np.percentile(full, 99):.2f} ms; index build {build:.1f} s")
    print(line, flush=True)
    return [line]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lexical", action="store_true", help="no semantic vectors")
    ap.add_argument("--only", default="banking,clinc,xsid,speed")
    ap.add_argument("--limit", type=int, default=None, help="cap the number of test rows (banking/clinc)")
    ap.add_argument("--tune", type=int, nargs="?", const=STEPS, default=None, metavar="STEPS",
                    help=f"BANKING77: fine-tune the model per knowledge base first ({STEPS} steps unless given)")
    ap.add_argument("--write-split", type=Path, default=None, metavar="DIR",
                    help="write the BANKING77 train/test split as CSVs for `loket kb eval --train --test` and stop")
    args = ap.parse_args()
    if args.write_split:
        write_split(args.write_split)
        return
    env = {"LOKET_KB_SEMANTIC": "off"} if args.lexical else {}
    embedder = load_embedder(env)
    print(f"semantic vectors: {'on (' + embedder.name + ')' if embedder else 'off'}", flush=True)
    only = set(args.only.split(","))
    if "speed" in only:
        speed()
    if "xsid" in only:
        xsid(embedder)
    if "banking" in only:
        banking(embedder, args.limit, args.tune)
    if "clinc" in only:
        clinc(embedder, args.limit)


if __name__ == "__main__":
    main()
