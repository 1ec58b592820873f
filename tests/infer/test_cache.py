"""The KV cache (infer/cache.py) and the interface the model calls on it."""

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.infer.cache import KVCache
from lmstack.model.config import ModelConfig
from lmstack.model.transformer import Transformer


def _model(arch="llama", window=None):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2 if arch != "gpt2" else None,
                      d_model=32, max_seq_len=64, sliding_window=window, init_std=0.2)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("arch,window", [("gpt2", None), ("llama", None), ("mistral", 4)])
def test_cached_decoding_equals_full_forward(arch, window):
    m = _model(arch, window)
    cfg = m.cfg
    ids = torch.randint(0, 50, (2, 12))
    full = m(ids)
    cache = KVCache(cfg, 2, 12)
    steps = [m(ids[:, :5], cache=cache)] + [m(ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


class GrowingCache:
    """The interface in infer/cache.py's docstring and nothing else: no preallocation, keys concatenated."""

    def __init__(self, batch):
        self.batch, self.length, self.k, self.v, self.calls = batch, 0, {}, {}, []
        self.key_pos = torch.zeros(batch, 0, dtype=torch.long)

    def positions(self, T):
        start = int(self.key_pos.max()) + 1 if self.length else 0
        return (start + torch.arange(T)).expand(self.batch, T)

    def append(self, key_pos):
        self.key_pos = torch.cat([self.key_pos, key_pos], dim=1)
        self.length += key_pos.shape[1]
        return self.key_pos, bool((self.key_pos < 0).any())

    def update(self, layer, k, v):
        self.calls.append((layer, k.shape[2]))
        self.k[layer] = torch.cat([self.k[layer], k], dim=2) if layer in self.k else k
        self.v[layer] = torch.cat([self.v[layer], v], dim=2) if layer in self.v else v
        return self.k[layer], self.v[layer]


@pytest.mark.parametrize("arch,window", [("gpt2", None), ("mistral", 3)])
def test_model_uses_only_the_cache_interface(arch, window):
    m = _model(arch, window)
    ids = torch.randint(0, 50, (2, 9))
    full = m(ids)
    cache = GrowingCache(2)
    with torch.inference_mode():
        steps = [m(ids[:, :4], cache=cache)] + [m(ids[:, t:t + 1], cache=cache) for t in range(4, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert cache.calls[:3] == [(0, 4), (1, 4), (0, 1)]  # every layer stores its own keys, once per step
    assert cache.length == 9 and cache.key_pos[0].tolist() == list(range(9))


def test_cache_full_is_an_error():
    m = _model()
    cache = KVCache(m.cfg, 1, 4)
    with torch.inference_mode():
        m(torch.tensor([[1, 2, 3]]), cache=cache)
        with pytest.raises(LmstackError, match="KV cache full"):
            m(torch.tensor([[4, 5]]), cache=cache)
    assert cache.length == 3


def test_left_padded_rows_decode_as_alone():
    # Padding slots carry key position -1: masked out, and each row's RoPE positions start at 0.
    m = _model()
    a, b = [3, 4, 5, 6], [7, 8]
    cache = KVCache(m.cfg, 2, 6)
    ids = torch.tensor([a, [0, 0] + b])
    pad = torch.tensor([[True] * 4, [False, False, True, True]])
    pos = (pad.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        first = m(ids, positions=pos, cache=cache, pad_mask=pad)
        nxt = m(torch.tensor([[9], [9]]), cache=cache)
    assert cache.padded and cache.key_pos[1, :2].tolist() == [-1, -1]
    for row, toks, n in ((0, a, 4), (1, b, 2)):
        alone = m(torch.tensor([toks + [9]]))
        assert torch.allclose(first[row, -1], alone[0, n - 1], atol=1e-5)
        assert torch.allclose(nxt[row, 0], alone[0, n], atol=1e-5)


def test_cache_shift_and_growth_keep_contents():
    m = _model()
    c = KVCache(m.cfg, 2, 4)
    with torch.inference_mode():
        m(torch.tensor([[5, 6, 7], [8, 9, 10]]), cache=c)
    k0 = c.k[0][:, :, :3].clone()
    c.shift(3)  # grows past max_len 4
    assert c.length == 6 and c.max_len >= 6 and bool((c.key_pos[:, :3] == -1).all())
    assert torch.equal(c.k[0][:, :, 3:6], k0)
    assert c.empty_front() == 3
    c.shift(-3)
    assert c.length == 3 and torch.equal(c.k[0][:, :, :3], k0) and c.key_pos[0, :3].tolist() == [0, 1, 2]
