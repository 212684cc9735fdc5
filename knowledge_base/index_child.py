"""Build a lexical index in a short-lived child process.

Fitting the index needs scikit-learn (TF-IDF vocabularies, the classifier), scipy's sparse matrices and bm25s,
which together cost a process about 110 MB that it never gives back. A fitted index is plain numpy data (see
``knowledge_base.features``). So a server builds in a child (``python -m knowledge_base.index_child``:
published articles in on stdin, the fitted ``Ranker`` out on stdout, both pickled) and keeps only the result.

The pickles travel between this process and a child it started from its own interpreter; nothing else writes
to those pipes.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from pathlib import Path

from knowledge_base.ranker import Calibration, Doc, Ranker

ROOT = Path(__file__).resolve().parent.parent


class IndexBuildFailed(RuntimeError):
    """The child exited without an index; the message is its last line of output."""


async def build_in_child(docs: list[Doc], calibration: Calibration) -> Ranker:
    """A lexical ``Ranker`` over ``docs``, fitted in a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "knowledge_base.index_child", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT))
    out, err = await proc.communicate(pickle.dumps((docs, calibration), protocol=pickle.HIGHEST_PROTOCOL))
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        raise IndexBuildFailed(lines[-1] if lines else f"exit status {proc.returncode}")
    ranker = pickle.loads(out)
    if not isinstance(ranker, Ranker):
        raise IndexBuildFailed(f"the child sent a {type(ranker).__name__}, not an index")
    return ranker


def _child() -> int:
    docs, calibration = pickle.loads(sys.stdin.buffer.read())
    ranker = Ranker(docs, embedder=None, calibration=calibration)
    sys.stdout.buffer.write(pickle.dumps(ranker, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
