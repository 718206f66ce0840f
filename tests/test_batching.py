"""The query-text batcher: texts queued together go through one model call, results go back to their callers."""

import threading

import numpy as np
import pytest

from search.query_batcher import TextBatcher


def test_queued_texts_share_calls_and_get_their_own_vectors():
    calls: list[list[str]] = []
    busy, gate = threading.Event(), threading.Event()

    def embed(texts):
        calls.append(list(texts))
        busy.set()
        gate.wait()  # hold the first call so the rest queue up behind it
        return np.array([[float(t)] for t in texts])

    batcher = TextBatcher(embed, workers=1, max_batch=4)
    futures = [batcher.submit("0")]
    assert busy.wait(5)
    futures += [batcher.submit(str(i)) for i in range(1, 7)]
    gate.set()
    assert [f.result(5)[0] for f in futures] == [float(i) for i in range(7)]
    batcher.close()
    assert calls == [["0"], ["1", "2", "3", "4"], ["5", "6"]]


def test_a_failing_call_fails_its_callers_and_the_worker_lives_on():
    def embed(texts):
        if "bad" in texts:
            raise ValueError("boom")
        return np.zeros((len(texts), 2))

    batcher = TextBatcher(embed, workers=2)
    with pytest.raises(ValueError, match="boom"):
        batcher.submit("bad").result(5)
    assert batcher.embed("good").shape == (2,)
    batcher.close()
