"""Retrieval and confidence: BM25 + TF-IDF evidence, an optional learned classifier and optional semantic vectors.

An index is built per language from the published articles. Each article contributes *units* (its title and
each example question) and one long document (title, questions, tags, body). For a query we gather candidates
from BM25 (units and documents), the classifier and the vectors, compute per-article evidence in [0, 1] and
fuse it into one score; the confidence is a logistic function of the best score, its margin over the second
and a few more signals (``CONFIDENCE_FEATURES``), with coefficients that ``fit_calibration`` learns from
held-out questions. With vectors, the classifiers' log-probabilities of the best few articles also get the
articles' late-interaction score (token-level MaxSim, ``features.TokenIndex``) from the same forward pass.

Nothing here touches the database: ``Doc`` in, ``Hit`` out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from knowledge_base.analyzer import analyze, normalize
from knowledge_base.features import (
    BM25,
    EMPTY,
    Softmax,
    TermVectors,
    TokenIndex,
    Vector,
    merge_near_duplicates,
)
from knowledge_base.semantic import DIM, Embedder

log = logging.getLogger("loket.kb")

MAX_QUERY_CHARS = 1000
# all-MiniLM-L6-v2 is an English model: on the Indonesian demo set it lowered accuracy (87.9 → 77.9 %),
# so Indonesian indexes stay lexical unless LOKET_KB_SEMANTIC_LANGUAGES says otherwise.
SEMANTIC_LANGUAGES: tuple[str, ...] = ("en",)


def semantic_languages(env: dict[str, str]) -> tuple[str, ...]:
    """The languages whose indexes use vectors: ``LOKET_KB_SEMANTIC_LANGUAGES`` (comma-separated) or the default."""
    raw = env.get("LOKET_KB_SEMANTIC_LANGUAGES")
    return tuple(x.strip() for x in raw.split(",")) if raw else SEMANTIC_LANGUAGES


# Fusion weights (renormalised over the evidence present). Chosen on a development split carved out of the
# BANKING77 training part (never its test part) and on the demo articles' example questions.
LEXICAL_WEIGHTS = {"clf": 0.45, "word": 0.2, "char": 0.15, "sem": 0.0}
SEMANTIC_WEIGHTS = {"clf": 0.45, "word": 0.2, "char": 0.15, "sem": 0.2}
SEMANTIC_FEW_WEIGHTS = {"clf": 0.35, "word": 0.1, "char": 0.05, "sem": 0.5}
FEW_EXAMPLES = 20  # median example questions per article below which the "few" settings apply
# With vectors there are two classifiers, one on the TF-IDF words and character n-grams and one on the
# embeddings; their log-probabilities are mixed with this weight on the embedding side.
EMB_MIX = 0.7
EMB_MIX_FEW = 0.7
CLF_C = 20.0
EMB_C = 20.0
LEARN_MAX_UNITS = 60_000  # above this the classifiers are not trained (lexical + vectors only)
CHAR_MAX_UNITS = 60_000
UNIT_CANDIDATES = 50  # BM25 best example questions whose articles become candidates
DOC_CANDIDATES = 20
# Late interaction: the MaxSim of the LATE_CANDIDATES articles the classifiers like best, times LATE_WEIGHT, is
# added to their log-probabilities. An article's token vectors closer than LATE_MERGE (cosine) are merged when
# the index is built (about 40 % are left on BANKING77, at no loss: ~4.6 float32 vectors, 7 KB, per example
# question). Chosen on development splits of the BANKING77 training part. Above LATE_MAX_UNITS example
# questions (~140 MB of token vectors) an index has no late interaction.
LATE_WEIGHT = 20.0
LATE_CANDIDATES = 5
LATE_MERGE = 0.8
LATE_MAX_UNITS = 20_000


@dataclass(frozen=True)
class Doc:
    id: str
    language: str
    title: str
    body: str = ""
    questions: tuple[str, ...] = ()
    category: str = ""
    tags: tuple[str, ...] = ()
    answer: str = ""


@dataclass(frozen=True)
class Hit:
    id: str
    title: str
    score: float
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    query: str
    language: str
    hits: list[Hit]
    confidence: float
    elapsed_ms: float

    @property
    def top(self) -> Hit | None:
        return self.hits[0] if self.hits else None


# What the confidence is computed from: the best fused score and its margin over the second; the share of the
# query's terms the best article contains; the classifiers' probability for it (as a logit: near-certain
# answers differ there) and its margin over the next hit's; whether the lexical and the embedding classifier
# agree on it (1.0 when there is only one); its late-interaction score and margin over the other hits'; whether
# the example question nearest by embedding belongs to it. Signals a knowledge base lacks count as 0 (or 1.0).
CONFIDENCE_FEATURES = ("top", "margin", "cover", "prob_logit", "agree", "prob_margin", "late", "late_margin",
                       "nearest")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


def confidence_features(hits: Sequence[Hit]) -> tuple[float, ...]:
    if not hits:
        return (0.0,) * len(CONFIDENCE_FEATURES)
    top, rest = hits[0], hits[1:]
    ev = top.evidence
    prob = ev.get("prob", top.score)
    late = ev.get("late", 0.0)
    return (
        top.score,
        top.score - (rest[0].score if rest else 0.0),
        ev.get("cover", 1.0),
        _logit(prob),
        ev.get("agree", 1.0),
        prob - max((h.evidence.get("prob", h.score) for h in rest), default=0.0),
        late,
        late - max((h.evidence.get("late", 0.0) for h in rest), default=0.0),
        ev.get("nearest", 0.0),
    )


@dataclass
class Calibration:
    """confidence = sigmoid(w · features + bias) over ``CONFIDENCE_FEATURES``; the defaults are hand-set for
    knowledge bases without held-out questions, ``fit_calibration`` learns them from held-out questions."""

    weights: tuple[float, ...] = (9.0, 5.0, 3.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    bias: float = -7.0

    def __call__(self, features: Sequence[float]) -> float:
        z = self.bias + sum(w * f for w, f in zip(self.weights, features, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


class LanguageIndex:
    def __init__(self, docs: list[Doc], language: str, embedder: Embedder | None = None,
                 learn: bool = True, weights: dict[str, float] | None = None,
                 previous: LanguageIndex | None = None) -> None:
        """``previous``: the index this one replaces; articles whose title and questions did not change keep its
        token vectors instead of being encoded again."""
        t0 = time.perf_counter()
        self.language = language
        self.docs = docs
        self.embedder = embedder
        unit_article: list[int] = []
        unit_texts: list[str] = []
        for i, d in enumerate(docs):
            for text in (d.title, *d.questions):
                if text.strip():
                    unit_texts.append(text)
                    unit_article.append(i)
        self.unit_texts = unit_texts
        self.unit_article = np.asarray(unit_article, dtype=np.int64)
        self.n = len(docs)
        # units are grouped by article: per-article maxima are one reduceat over these starts
        self._with_units, self._unit_starts = np.unique(self.unit_article, return_index=True)
        unit_tokens = [analyze(t, language) for t in unit_texts]
        doc_tokens = [
            analyze(" ".join([d.title, d.title, *d.questions, *d.tags, d.category, d.body[:4000]]), language)
            for d in docs
        ]
        self.vocab = [frozenset(t) for t in doc_tokens]
        self.bm25_units = self._bm25(unit_tokens)
        self.bm25_docs = self._bm25(doc_tokens)
        # TF-IDF cosine over units: bounded evidence of how well the query matches an example question.
        self.word: TermVectors | None = None
        self.char: TermVectors | None = None
        if any(unit_tokens):
            self.word = TermVectors(unit_tokens, "word")
            self._idf_max = float(self.word.idf.max())
        if unit_texts and len(unit_texts) <= CHAR_MAX_UNITS:
            self.char = TermVectors(unit_texts, "char", preprocessor=normalize)
        self.unit_emb: np.ndarray | None = None
        self.tokens: TokenIndex | None = None
        if embedder is not None and unit_texts:
            if len(unit_texts) <= LATE_MAX_UNITS:
                self.tokens = self._token_index(embedder, previous)
            self.unit_emb = embedder.encode(unit_texts)
        counts = np.bincount(self.unit_article, minlength=max(self.n, 1)) if self.n else np.zeros(1)
        few = float(np.median(counts)) < FEW_EXAMPLES
        self.emb_mix = EMB_MIX_FEW if few else EMB_MIX
        self.lex_clf: Softmax | None = None
        self.emb_clf: Softmax | None = None
        if learn and self.n >= 2 and len(unit_texts) <= LEARN_MAX_UNITS:
            blocks = [v.matrix for v in (self.word, self.char) if v is not None]
            if blocks:
                self.lex_clf = Softmax(blocks, self.unit_article, self.n, CLF_C)
            if self.unit_emb is not None:
                self.emb_clf = Softmax([self.unit_emb], self.unit_article, self.n, EMB_C)
        for v in (self.word, self.char):
            if v is not None:
                v.release_matrix()
        w = dict(LEXICAL_WEIGHTS if self.unit_emb is None else SEMANTIC_FEW_WEIGHTS if few else SEMANTIC_WEIGHTS)
        if weights:
            w.update(weights)
        if self.lex_clf is None and self.emb_clf is None:
            w["clf"] = 0.0
        if self.unit_emb is None:
            w["sem"] = 0.0
        if self.char is None:
            w["char"] = 0.0
        total = sum(w.values()) or 1.0
        self.weights = {k: v / total for k, v in w.items()}
        self.build_seconds = time.perf_counter() - t0

    def _article_units(self) -> list[tuple[int, tuple[str, ...]]]:
        """Each article with units and its unit texts (an article's units are contiguous)."""
        bounds = np.append(self._unit_starts, len(self.unit_texts)).tolist()
        return [(a, tuple(self.unit_texts[lo:hi]))
                for a, lo, hi in zip(self._with_units.tolist(), bounds[:-1], bounds[1:], strict=True)]

    def _token_index(self, embedder: Embedder, previous: LanguageIndex | None) -> TokenIndex:
        """Each article's token vectors, near-duplicates merged; unchanged articles' taken from ``previous``."""
        known = previous.token_blocks() if previous is not None and previous.embedder is embedder else {}
        articles = self._article_units()
        todo = [(a, units) for a, units in articles if units not in known]
        texts = [t for _, units in todo for t in units]
        _, vecs = embedder.encode_tokens(texts)
        dim = vecs[0].shape[1] if vecs else next((b.shape[1] for b in known.values()), DIM)
        empty = np.zeros((0, dim), np.float32)
        blocks = [empty] * self.n
        for a, units in articles:
            blocks[a] = known.get(units, empty)
        at = 0
        for a, units in todo:
            blocks[a] = merge_near_duplicates(np.concatenate(vecs[at:at + len(units)]), LATE_MERGE)
            at += len(units)
        return TokenIndex(blocks, dim)

    def token_blocks(self) -> dict[tuple[str, ...], np.ndarray]:
        """Token vectors per article, keyed by the article's unit texts (for the next index to reuse)."""
        if self.tokens is None:
            return {}
        return {units: self.tokens.block(a) for a, units in self._article_units()}

    @staticmethod
    def _bm25(tokens: list[list[str]]) -> BM25 | None:
        return BM25(tokens) if tokens and any(tokens) else None

    # ------------------------------------------------------------------ query
    def search(self, query: str, k: int = 5, lexical_only: bool = False) -> list[Hit]:
        if not self.n:
            return []
        q_tokens = analyze(query, self.language)
        cand = np.zeros(self.n, dtype=bool)
        bm_units = self._bm25_scores(self.bm25_units, q_tokens)
        if bm_units is not None:
            top_u = self._top(bm_units, UNIT_CANDIDATES)
            cand[self.unit_article[top_u[bm_units[top_u] > 0]]] = True
        bm_docs = self._bm25_scores(self.bm25_docs, q_tokens)
        if bm_docs is not None:
            top_d = self._top(bm_docs, DOC_CANDIDATES)
            cand[top_d[bm_docs[top_d] > 0]] = True
        if lexical_only:
            if bm_docs is None:
                return []
            order = sorted(np.flatnonzero(cand).tolist(), key=lambda i: -float(bm_docs[i]))[:k]
            best = float(bm_docs[order[0]]) if order else 1.0
            return [Hit(self.docs[i].id, self.docs[i].title, float(bm_docs[i]) / (best or 1.0)) for i in order]
        per_article, prob, agree = self._evidence(query, q_tokens, cand)
        if not cand.any():
            return []
        idx = np.flatnonzero(cand)
        score = np.zeros(len(idx))
        evidence = {name: vals[idx] for name, vals in per_article.items()}
        for name, weight in self.weights.items():
            if weight and name in evidence:
                score += weight * evidence[name]
        nearest = int(np.argmax(per_article["sem"])) if "sem" in per_article else -1
        top_k = np.argsort(-score, kind="stable")[:k]
        q_set = set(q_tokens)
        hits = []
        for o in top_k:
            i = int(idx[o])
            ev = {n: round(float(v[o]), 4) for n, v in evidence.items()}
            ev["cover"] = round(len(q_set & self.vocab[i]) / len(q_set), 4) if q_set else 0.0
            if prob is not None:
                ev["prob"] = round(float(prob[i]), 4)
                ev["agree"] = float(agree == i) if agree is not None else 1.0
            if nearest >= 0:
                ev["nearest"] = float(nearest == i)
            hits.append(Hit(self.docs[i].id, self.docs[i].title, float(score[o]), ev))
        return hits

    def _evidence(self, query: str, q_tokens: list[str], cand: np.ndarray
                  ) -> tuple[dict[str, np.ndarray], np.ndarray | None, int | None]:
        """Per-article evidence in [0, 1]; marks more candidates. Also the classifiers' probability per article
        and, when there are two classifiers, the article the lexical one prefers (to check agreement)."""
        word_q = self.word.query(q_tokens) if self.word is not None else EMPTY
        char_q = self.char.query(query) if self.char is not None else EMPTY
        sem_q: np.ndarray | None = None
        q_vecs: np.ndarray | None = None
        if self.unit_emb is not None and self.embedder is not None:
            if self.tokens is not None:
                sems, vecs = self.embedder.encode_tokens([query[:MAX_QUERY_CHARS]])
                sem_q, q_vecs = sems[0], vecs[0]
            else:
                sem_q = self.embedder.encode([query[:MAX_QUERY_CHARS]])[0]
        per_article: dict[str, np.ndarray] = {}
        if len(word_q[0]) and self.word is not None:
            per_article["word"] = self._max_per_article(self.word.similarities(word_q)) * self._known_share(q_tokens)
            cand[self._top(per_article["word"], 10, positive=True)] = True
        if len(char_q[0]) and self.char is not None:
            per_article["char"] = self._max_per_article(self.char.similarities(char_q))
        if sem_q is not None and self.unit_emb is not None:
            per_article["sem"] = np.clip(self._max_per_article(self.unit_emb @ sem_q), 0.0, 1.0)
            cand[self._top(per_article["sem"], 10)] = True
        log_p: np.ndarray | None = None
        agree: int | None = None
        if self.lex_clf is not None:
            parts: list[Vector | np.ndarray] = [word_q, char_q] if self.char is not None else [word_q]
            log_p = self.lex_clf.log_proba(parts)
        if self.emb_clf is not None and sem_q is not None:
            log_e = self.emb_clf.log_proba([sem_q])
            if log_p is not None:
                agree = int(np.argmax(log_p))
                log_p = (1.0 - self.emb_mix) * log_p + self.emb_mix * log_e
            else:
                log_p = log_e
        if log_p is not None and self.tokens is not None and q_vecs is not None:
            late = self._late(q_vecs, log_p)
            per_article["late"] = late
            log_p = log_p + LATE_WEIGHT * late
        prob: np.ndarray | None = None
        if log_p is not None:
            prob = np.exp(log_p - log_p.max())
            prob /= prob.sum()
            if len(word_q[0]) or sem_q is not None:
                cand[self._top(prob, 5)] = True
            sims = [per_article[n] for n in ("word", "char", "sem") if n in per_article]
            # the probabilities always sum to 1; scale them by how similar the text really is
            per_article["clf"] = prob * (np.maximum.reduce(sims) if sims else 0.0)
        return per_article, prob, agree

    def _late(self, q_vecs: np.ndarray, log_p: np.ndarray) -> np.ndarray:
        """Late-interaction score per article: computed for the classifiers' best candidates, the lowest of
        those for every other article (so adding it never lifts an article that was not scored)."""
        assert self.tokens is not None
        top = self._top(log_p, LATE_CANDIDATES)
        scores = self.tokens.scores(q_vecs, top)
        out = np.full(self.n, float(scores.min()) if len(scores) else 0.0, np.float32)
        out[top] = scores
        return out

    def _known_share(self, tokens: list[str]) -> float:
        """Cosine over known terms ignores words the articles never use; count them as missing evidence."""
        assert self.word is not None
        vocab = self.word.vocabulary
        idf = self.word.idf
        known = unknown = 0.0
        for tok in set(tokens):
            j = vocab.get(tok)
            if j is None:
                unknown += self._idf_max ** 2
            else:
                known += float(idf[j]) ** 2
        return math.sqrt(known / (known + unknown)) if known else 0.0

    @staticmethod
    def _top(values: np.ndarray, n: int, positive: bool = False) -> np.ndarray:
        top = np.argpartition(-values, n - 1)[:n] if len(values) > n else np.arange(len(values))
        return top[values[top] > 0] if positive else top

    @staticmethod
    def _bm25_scores(index: BM25 | None, tokens: list[str]) -> np.ndarray | None:
        if index is None or not tokens:
            return None
        return index.scores(tokens)

    def _max_per_article(self, unit_scores: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        if len(unit_scores):
            out[self._with_units] = np.maximum.reduceat(unit_scores, self._unit_starts)
        return out


class Ranker:
    """All languages' indexes plus the calibration that turns scores into a confidence."""

    def __init__(self, docs: list[Doc], embedder: Embedder | None = None, learn: bool = True,
                 calibration: Calibration | None = None, weights: dict[str, float] | None = None,
                 semantic_languages: tuple[str, ...] = SEMANTIC_LANGUAGES, previous: Ranker | None = None) -> None:
        """``previous``: the ranker this one replaces, whose token vectors of unchanged articles are reused."""
        t0 = time.perf_counter()
        self.embedder = embedder
        self.calibration = calibration or Calibration()
        by_lang: dict[str, list[Doc]] = {}
        for d in docs:
            by_lang.setdefault(d.language, []).append(d)
        before: dict[str, LanguageIndex] = previous.indexes if previous is not None else {}
        self.indexes: dict[str, LanguageIndex] = {
            lang: LanguageIndex(ds, lang, embedder if lang in semantic_languages else None, learn, weights,
                                before.get(lang))
            for lang, ds in by_lang.items()
        }
        self.docs = {d.id: d for d in docs}
        self.build_seconds = time.perf_counter() - t0

    @property
    def languages(self) -> list[str]:
        return sorted(self.indexes)

    def search(self, query: str, language: str = "id", k: int = 5, fallback: bool = True) -> Result:
        t0 = time.perf_counter()
        query = (query or "")[:MAX_QUERY_CHARS]
        hits: list[Hit] = []
        used = language
        if query.strip():
            index = self.indexes.get(language)
            hits = index.search(query, k) if index else []
            if fallback and (not hits or hits[0].score < 0.2):
                for other, idx in self.indexes.items():
                    if other == language:
                        continue
                    alt = idx.search(query, k)
                    if alt and (not hits or alt[0].score > hits[0].score + 0.1):
                        hits, used = alt, other
        conf = self.calibration(confidence_features(hits)) if hits else 0.0
        return Result(query, used, hits, conf, (time.perf_counter() - t0) * 1000)


def fit_calibration(rows: list[tuple[tuple[float, ...], bool]]) -> Calibration:
    """Fit confidence = P(top answer is right) from held-out (confidence features, correct?) rows."""
    if len(rows) < 10 or len({c for _, c in rows}) < 2:
        return Calibration()
    from sklearn.linear_model import LogisticRegression

    x = np.array([f for f, _ in rows])
    y = np.array([int(c) for _, c in rows])
    lr = LogisticRegression(C=10.0, max_iter=500).fit(x, y)
    return Calibration(tuple(float(v) for v in lr.coef_[0]), float(lr.intercept_[0]))
