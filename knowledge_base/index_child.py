"""Build a lexical index in a short-lived child process.

Fitting the index needs scikit-learn (TF-IDF vocabularies, the classifier), scipy's sparse matrices and bm25s,
which together cost a process about 110 MB that it never gives back. A fitted index is plain numpy data (see
``knowledge_base.features``). So a server builds in a child (``python -m knowledge_base.index_child``:
published articles in on stdin, the fitted ``Ranker`` out on stdout, both pickled) and keeps only the result.

The pickles travel between this process and a child it started from its own interpreter; nothing else writes
to those pipes.
"""

from __future__ import annotations

import pickle
import sys

from knowledge_base.ranker import Calibration, Doc, Ranker
from storage.child_process import run_module


class IndexBuildFailed(RuntimeError):
    """The child exited without an index; the message is its last line of output."""


async def build_in_child(docs: list[Doc], calibration: Calibration) -> Ranker:
    """A lexical ``Ranker`` over ``docs``, fitted in a child process."""
    child = await run_module("knowledge_base.index_child",
                             pickle.dumps((docs, calibration), protocol=pickle.HIGHEST_PROTOCOL))
    if child.returncode != 0:
        raise IndexBuildFailed(child.last_error)
    ranker = pickle.loads(child.output)
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
