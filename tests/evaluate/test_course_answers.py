"""The course evaluation's answer decoding: bounded batches, and each row's sample independent of its batch."""

from __future__ import annotations

import lmstack.course.evaluation as C
import lmstack.infer.engine as engine


def _recs(n):
    qs = ["the cat", "a dog sat on the mat", "hello there", "one two three four five"]
    return [{"prompt": [{"role": "user", "content": qs[i % len(qs)]}]} for i in range(n)]


def _spy(monkeypatch):
    sizes = []
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda m, p, sp, tok: sizes.append(len(p)) or real(m, p, sp, tok))
    return sizes


def test_answers_are_decoded_in_bounded_batches_each_row_from_its_own_stream(tiny_lm, monkeypatch):
    recs = _recs(7)
    whole, _ = C.answers_of(tiny_lm, recs, 6, temperature=1.0, seed=3)  # 7 rows < ANSWER_CHUNK: one batch
    sizes = _spy(monkeypatch)
    monkeypatch.setattr(C, "ANSWER_CHUNK", 3)
    chunked, _ = C.answers_of(tiny_lm, recs, 6, temperature=1.0, seed=3)
    assert sizes == [3, 3, 1]
    assert [c.ids for c in chunked] == [c.ids for c in whole]  # row i's answer comes from (seed, i), not its batch
    # Another seed is another draw, and rows with the same prompt (0 and 4) do not share a stream.
    other, _ = C.answers_of(tiny_lm, recs, 6, temperature=1.0, seed=4)
    assert [c.ids for c in other] != [c.ids for c in whole]
    assert whole[0].ids != whole[4].ids


def test_answer_sets_decode_every_setting_together_as_each_alone(tiny_lm, monkeypatch):
    recs = _recs(5)
    settings = [{"temperature": 0.0}, {"temperature": 1.0, "seed": 11}, {"temperature": 1.0, "seed": 1011}]
    alone = [C.answers_of(tiny_lm, recs, 6, **st)[0] for st in settings]
    sizes = _spy(monkeypatch)
    together, ids = C.answer_sets(tiny_lm, recs, 6, settings)
    assert sizes == [15]  # one batch of 3 settings x 5 prompts
    assert len(ids) == 5 and [[c.ids for c in s] for s in together] == [[c.ids for c in s] for s in alone]


def test_answer_batches_shrink_to_the_cache_budget(tiny_lm, monkeypatch):
    sizes = _spy(monkeypatch)
    monkeypatch.setattr(C, "CACHE_BUDGET", 1)  # a model too large for the budget: one row at a time
    C.answers_of(tiny_lm, _recs(3), 2)
    assert sizes == [1, 1, 1]
