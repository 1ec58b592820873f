"""Prefix caching: prompts that start the same way reuse the stored keys/values of the shared tokens, and decode
exactly as they would with every token computed."""

import pytest
import torch

from lmstack.infer.cache import PrefixCache
from lmstack.infer.engine import Generation, Request, generate
from lmstack.infer.sampling import SamplingParams
from lmstack.model.config import ModelConfig
from lmstack.model.transformer import Transformer

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)


def _model(arch="llama", window=None):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=60, n_layer=2, n_head=4, n_kv_head=2 if arch != "gpt2" else None,
                      d_model=32, max_seq_len=96, sliding_window=window, init_std=0.3)
    return Transformer(cfg).eval()


def _alone(model, prompt):
    return generate(model, [prompt], GREEDY)[0]


@pytest.mark.parametrize("arch,window", [("llama", None), ("gpt2", None), ("mistral", 5)])
def test_joining_prompts_decode_as_alone_with_partial_full_and_no_hits(arch, window):
    model = _model(arch, window)
    shared = list(range(3, 23))  # a 20-token few-shot prefix
    pc = PrefixCache(max_tokens=1000)
    gen = Generation.empty(model, prefix_cache=pc)
    first = Request(shared + [40, 41, 42], GREEDY)
    gen.add([first])
    gen.step()
    gen.step()  # the first request is decoding when the others join
    later = [Request(shared + [50, 51], GREEDY),  # shares the 20-token prefix
             Request(shared + [40, 41, 42], GREEDY),  # the same prompt again: nothing left to compute
             Request([7, 8, 9, 10], GREEDY),  # no stored prefix
             Request([44], GREEDY)]  # one token: nothing to prefill
    gen.add(later)
    while not gen.done:
        gen.step()
    for r in [first] + later:
        ref = _alone(model, r.prompt)
        assert r.result.ids == ref.ids, (r.prompt, r.result.ids, ref.ids)
        assert torch.allclose(torch.tensor(r.result.logprobs), torch.tensor(ref.logprobs), atol=1e-5)
    st = pc.stats()
    assert st["hits"] == 2 and st["hit_tokens"] == 20 + 22, st  # the partial hit and the repeated prompt


def test_the_first_batch_stores_its_prompts_and_a_repeat_skips_the_prefill(monkeypatch):
    model = _model()
    pc = PrefixCache(max_tokens=1000)
    prompts = [list(range(5, 30)), list(range(10, 20))]
    out = generate(model, prompts, GREEDY)  # the reference, without a prefix cache
    gen = Generation(model, prompts, GREEDY, prefix_cache=pc)
    assert [r.ids for r in gen.run()] == [o.ids for o in out]
    assert pc.stats()["entries"] == 2 and pc.tokens == 24 + 9
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda ids, **kw: calls.append(ids.shape[1]) or forward(ids, **kw))
    gen = Generation(model, [prompts[0]], GREEDY, prefix_cache=pc)
    assert gen.run()[0].ids == out[0].ids
    assert calls == [1] * GREEDY.max_new_tokens  # every prompt token but the last came from the cache


def test_lru_eviction_keeps_the_budget_and_a_longer_prompt_replaces_its_prefix():
    pc = PrefixCache(max_tokens=10)
    kv = lambda n: ([torch.zeros(1, 1, n, 2)], [torch.zeros(1, 1, n, 2)])  # noqa: E731
    pc.put([1, 2, 3], *kv(3))
    pc.put([1, 2, 3, 4, 5], *kv(5))  # extends [1, 2, 3]: replaces it
    assert list(pc.entries) == [(1, 2, 3, 4, 5)] and pc.tokens == 5
    pc.put([1, 2], *kv(2))  # already covered by the stored prompt
    assert pc.tokens == 5
    pc.put([7, 8, 9, 10], *kv(4))
    assert pc.match([1, 2, 3, 9]) == (3, (1, 2, 3, 4, 5))  # used: now the most recent
    pc.get((1, 2, 3, 4, 5), 3)
    pc.put([20, 21, 22], *kv(3))  # 12 tokens > 10: the least recently used goes
    assert list(pc.entries) == [(1, 2, 3, 4, 5), (20, 21, 22)] and pc.tokens == 8
    assert pc.match([30, 31]) == (0, None)
