"""Grouping unanswered questions by similarity (analysed-token TF-IDF, greedy leader clustering)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from knowledge_base.analyzer import analyze

SIMILARITY = 0.45


@dataclass
class Gap:
    example: str
    count: int = 0
    others: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    closest: str | None = None


def _identity(x: list[str]) -> list[str]:
    return x


def group_gaps(rows: list[dict[str, Any]], similarity: float = SIMILARITY) -> list[Gap]:
    rows = [r for r in rows if (r.get("text") or "").strip()]
    if not rows:
        return []
    tokens = [analyze(r["text"], r.get("language") or "id") or [r["text"].strip().lower()] for r in rows]
    vec = TfidfVectorizer(analyzer=_identity, sublinear_tf=True).fit_transform(tokens).tocsr()
    leaders: list[int] = []
    members: list[list[int]] = []
    for i in range(len(rows)):
        if leaders:
            sims = (vec[leaders] @ vec[i].T).toarray().ravel()
            j = int(np.argmax(sims))
            if sims[j] >= similarity:
                members[j].append(i)
                continue
        leaders.append(i)
        members.append([i])
    gaps: list[Gap] = []
    for group in members:
        texts = [rows[i]["text"].strip() for i in group]
        distinct = list(dict.fromkeys(texts))
        closest = Counter(rows[i].get("top_article") for i in group if rows[i].get("top_article")).most_common(1)
        gaps.append(Gap(example=distinct[0], count=len(group), others=distinct[1:],
                        outcomes=Counter(rows[i]["outcome"] for i in group),
                        closest=closest[0][0] if closest else None))
    gaps.sort(key=lambda g: (-g.count, g.example))
    return gaps
