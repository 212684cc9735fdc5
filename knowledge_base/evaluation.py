"""Scoring a knowledge base on labelled questions, and building throwaway knowledge bases from labelled CSVs.

Rows are ``(text, label)``; the label ``__none__`` (or any label the knowledge base does not have) marks a
question no article answers, where the right behaviour is to abstain.
"""

from __future__ import annotations

import csv
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bot.texts import detect_language
from knowledge_base.ranker import Calibration, Doc, Ranker, confidence_features, fit_calibration
from knowledge_base.semantic import Embedder

NONE = "__none__"
COVERAGES = (0.5, 0.7, 0.9)


@dataclass
class Scored:
    label: str
    predicted: str | None
    confidence: float
    ms: float


@dataclass
class Report:
    n: int
    n_answerable: int
    n_none: int
    accuracy: float
    abstention: float | None
    macro_f1: float
    threshold: float
    coverage_at_threshold: float
    precision_at_threshold: float
    precision_at_coverage: dict[float, float]
    latency_p50_ms: float
    latency_p99_ms: float
    extra: dict[str, object] = field(default_factory=dict)

    def lines(self) -> list[tuple[str, str]]:
        out = [
            ("questions", f"{self.n} ({self.n_answerable} answerable, {self.n_none} __none__)"),
            ("accuracy (answerable, top-1)", f"{self.accuracy:.2%}"),
            ("abstention on __none__", "-" if self.abstention is None else f"{self.abstention:.2%}"),
            ("macro-F1 (at threshold)", f"{self.macro_f1:.4f}"),
            ("threshold", f"{self.threshold:.3f}"),
            ("coverage at threshold", f"{self.coverage_at_threshold:.2%}"),
            ("precision at threshold", f"{self.precision_at_threshold:.2%}"),
        ]
        out += [(f"precision at {int(c * 100)}% coverage", f"{p:.2%}") for c, p in self.precision_at_coverage.items()]
        out += [("latency p50 / p99", f"{self.latency_p50_ms:.2f} ms / {self.latency_p99_ms:.2f} ms")]
        out += [(k, str(v)) for k, v in self.extra.items()]
        return out


def read_labelled(path: Path, text_col: str = "text", label_col: str = "article_id") -> list[tuple[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if text_col not in cols or label_col not in cols:
            raise ValueError(f"{path}: needs columns {text_col!r} and {label_col!r}; found {', '.join(cols)}")
        return [(r[text_col] or "", (r[label_col] or "").strip()) for r in reader if (r[text_col] or "").strip()]


def score_rows(ranker: Ranker, rows: list[tuple[str, str]], language: str,
               progress: Callable[[int, int], None] | None = None) -> list[Scored]:
    known = set(ranker.docs)
    out: list[Scored] = []
    for n, (text, label) in enumerate(rows, start=1):
        res = ranker.search(text, language)
        top = res.top
        out.append(Scored(label if label in known else NONE, top.id if top else None, res.confidence, res.elapsed_ms))
        if progress:
            progress(n, len(rows))
    return out


def _macro_f1(gold: list[str], pred: list[str]) -> float:
    labels = set(gold) | set(pred)
    f1s = []
    for lab in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == lab and p == lab)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != lab and p == lab)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == lab and p != lab)
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def report(scored: list[Scored], threshold: float) -> Report:
    answerable = [s for s in scored if s.label != NONE]
    nones = [s for s in scored if s.label == NONE]
    acc = sum(s.predicted == s.label for s in answerable) / len(answerable) if answerable else 0.0
    abst = sum(s.confidence < threshold for s in nones) / len(nones) if nones else None
    gold = [s.label for s in scored]
    pred = [s.predicted if (s.predicted and s.confidence >= threshold) else NONE for s in scored]
    answered = [s for s in scored if s.predicted and s.confidence >= threshold]
    prec_thr = sum(s.predicted == s.label for s in answered) / len(answered) if answered else 1.0
    ranked = sorted(scored, key=lambda s: -s.confidence)
    pac: dict[float, float] = {}
    for c in COVERAGES:
        k = max(1, int(round(c * len(ranked))))
        top = ranked[:k]
        pac[c] = sum(s.predicted == s.label for s in top) / len(top) if top else 0.0
    ms = np.array([s.ms for s in scored]) if scored else np.zeros(1)
    return Report(
        n=len(scored), n_answerable=len(answerable), n_none=len(nones), accuracy=acc, abstention=abst,
        macro_f1=_macro_f1(gold, pred), threshold=threshold,
        coverage_at_threshold=len(answered) / len(scored) if scored else 0.0, precision_at_threshold=prec_thr,
        precision_at_coverage=pac, latency_p50_ms=float(np.percentile(ms, 50)),
        latency_p99_ms=float(np.percentile(ms, 99)),
    )


def choose_threshold(scored: list[Scored], target_precision: float) -> float:
    """The lowest confidence threshold whose precision on these (held-out) rows reaches the target."""
    cands = sorted({round(s.confidence, 4) for s in scored})
    best = cands[-1] if cands else 0.5
    for thr in cands:
        answered = [s for s in scored if s.predicted and s.confidence >= thr]
        if answered and sum(s.predicted == s.label for s in answered) / len(answered) >= target_precision:
            return thr
    return best


def guess_language(texts: list[str]) -> str:
    votes = Counter(detect_language(t) for t in texts[:500])
    votes.pop(None, None)
    return votes.most_common(1)[0][0] if votes else "id"  # type: ignore[return-value]


def docs_from_labelled(rows: list[tuple[str, str]], language: str) -> list[Doc]:
    by: dict[str, list[str]] = defaultdict(list)
    for text, label in rows:
        if label and label != NONE:
            by[label].append(text)
    return [Doc(id=lab, language=language, title=lab.replace("_", " ").replace("-", " "), questions=tuple(qs))
            for lab, qs in by.items()]


def keep_shots(rows: list[tuple[str, str]], shots: int | None, seed: int = 13) -> list[tuple[str, str]]:
    if not shots:
        return rows
    rng = random.Random(seed)
    by: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in rows:
        by[r[1]].append(r)
    out: list[tuple[str, str]] = []
    for lab in sorted(by):
        items = by[lab][:]
        rng.shuffle(items)
        out.extend(items[:shots])
    return out


def stratified_split(rows: list[tuple[str, str]], held_fraction: float, seed: int = 13
                     ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Per label, keep at least one row for fitting and hold out about ``held_fraction`` of the rest."""
    rng = random.Random(seed)
    by: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in rows:
        by[r[1]].append(r)
    fit: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for lab in sorted(by):
        items = by[lab][:]
        rng.shuffle(items)
        n_held = min(len(items) - 1, max(1 if len(items) >= 2 else 0, int(round(len(items) * held_fraction))))
        held.extend(items[:n_held])
        fit.extend(items[n_held:])
    return fit, held


def calibration_split(train: list[tuple[str, str]], held_fraction: float = 0.2, seed: int = 13
                      ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``train_kb``'s split of the answerable rows: those its calibration probe is fitted on, and those held out
    to calibrate it."""
    return stratified_split([r for r in train if r[1] != NONE], held_fraction, seed)


def tuning_docs(train: list[tuple[str, str]], language: str) -> list[Doc]:
    """The articles a tuned model may learn from without seeing ``train_kb``'s calibration rows."""
    return docs_from_labelled(calibration_split(train)[0], language)


@dataclass
class TrainedKB:
    ranker: Ranker
    threshold: float
    calibration: Calibration
    held_out: Report
    build_seconds: float


def train_kb(train: list[tuple[str, str]], language: str, embedder: Embedder | None,
             target_precision: float = 0.95, held_fraction: float = 0.2, seed: int = 13) -> TrainedKB:
    """Throwaway knowledge base from labelled rows: calibration and threshold come from a held-out part.

    Rows labelled ``__none__`` (questions no article should answer) never become articles: they all go to
    the held-out part, so the calibration and the threshold learn what to abstain on.
    """
    nones = [r for r in train if r[1] == NONE]
    fit, held = calibration_split(train, held_fraction, seed)
    held = held + nones
    probe = Ranker(docs_from_labelled(fit, language), embedder=embedder)
    raw: list[tuple[tuple[float, ...], str | None, str, float]] = []
    for text, label in held:
        res = probe.search(text, language)
        raw.append((confidence_features(res.hits), res.top.id if res.top else None, label, res.elapsed_ms))
    calibration = fit_calibration([(f, p == lab) for f, p, lab, _ in raw if p is not None])
    held_scored = [Scored(lab, p, calibration(f) if p else 0.0, ms) for f, p, lab, ms in raw]
    threshold = choose_threshold(held_scored, target_precision)
    t0 = time.perf_counter()
    ranker = Ranker(docs_from_labelled([r for r in train if r[1] != NONE], language), embedder=embedder,
                    calibration=calibration)
    return TrainedKB(ranker, threshold, calibration, report(held_scored, threshold), time.perf_counter() - t0)
