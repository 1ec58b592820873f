import json

import numpy as np
import pytest
import torch

from lmstack.data.mixture import Mixture, parse_mix, val_batches
from lmstack.data.shards import TokenDataset
from lmstack.errors import LmstackError


def make_shards(folder, n_tokens, base=0):
    """A shard folder whose tokens are base, base+1, ...: a token tells its source and position."""
    folder.mkdir(parents=True)
    tokens = (base + np.arange(n_tokens)).astype(np.uint32)
    tokens.tofile(folder / "train.bin")
    np.array([0, n_tokens], np.int64).tofile(folder / "train.idx")
    np.zeros(0, np.uint32).tofile(folder / "val.bin")
    np.array([0], np.int64).tofile(folder / "val.idx")
    manifest = {"format": "lmstack-tokens-v1", "dtype": "uint32", "vocab_size": 1 << 20, "eos_id": None,
                "eos_appended": False, "splits": {"train": {"tokens": n_tokens, "documents": 1},
                                                  "val": {"tokens": 0, "documents": 0}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return TokenDataset(folder)


BASES = {"web": 0, "books": 100_000, "code": 200_000}
SIZES = {"web": 50_000, "books": 2_000, "code": 300}


@pytest.fixture
def sources(tmp_path):
    return {n: make_shards(tmp_path / n, SIZES[n], BASES[n]) for n in BASES}


def source_of(x):
    return (x[:, 0] // 100_000).numpy()


def test_weights_not_sizes_decide(sources):
    mix = Mixture(sources, {"web": 0.2, "books": 0.5, "code": 0.3}, seq_len=16, global_batch=64, seed=1)
    rows = np.concatenate([source_of(mix.get_batch(s)[0]) for s in range(150)])
    freq = np.bincount(rows, minlength=3) / len(rows)
    assert np.allclose(freq, [0.2, 0.5, 0.3], atol=0.03)


def test_batches_are_a_function_of_seed_and_step(sources):
    kw = dict(weights={"web": 1, "books": 1, "code": 1}, seq_len=32, global_batch=8)
    a, b = Mixture(sources, seed=3, **kw), Mixture(sources, seed=3, **kw)
    x, y = a.get_batch(7)
    assert x.dtype == torch.long and x.shape == (8, 32) and y.shape == (8, 32)
    assert torch.equal(x, b.get_batch(7)[0])  # same (seed, step), new object: same batch (exact resume)
    assert not torch.equal(x, a.get_batch(8)[0])
    assert not torch.equal(x, Mixture(sources, seed=4, **kw).get_batch(7)[0])
    # y is x shifted by one: consecutive tokens of one window
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)


def test_ranks_slice_the_global_batch(sources):
    mix = Mixture(sources, {"web": 0.5, "books": 0.3, "code": 0.2}, seq_len=8, global_batch=12, seed=0)
    full_x, full_y = mix.get_batch(5)
    parts = [mix.get_batch(5, rank=r, world=4) for r in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    with pytest.raises(LmstackError, match="does not divide among 5"):
        mix.get_batch(0, rank=0, world=5)


def test_epochs_replay_the_draws(sources):
    mix = Mixture(sources, {"web": 0.6, "books": 0.3, "code": 0.1}, seq_len=16, global_batch=8, seed=2)
    counts = np.zeros(3, np.int64)
    for step in range(40):
        counts += np.bincount(source_of(mix.get_batch(step)[0]), minlength=3)
    drawn = mix.tokens_drawn(40)
    assert drawn == {n: int(c) * 16 for n, c in zip(["web", "books", "code"], counts)}
    ep = mix.epochs(40)
    assert ep == pytest.approx({n: drawn[n] / SIZES[n] for n in SIZES})
    assert ep["code"] > ep["web"]  # the small source is repeated, the big one barely touched
    # the cached replay gives the same answers forwards and backwards
    assert mix.tokens_drawn(10) == Mixture(sources, mix.weights, 16, 8, seed=2).tokens_drawn(10)
    assert mix.tokens_drawn(40) == drawn and mix.tokens_drawn(0) == {n: 0 for n in SIZES}


def test_zero_weight_source_is_never_drawn(sources):
    mix = Mixture(sources, {"web": 1, "books": 0, "code": 1}, seq_len=4, global_batch=16)
    assert mix.tokens_drawn(50)["books"] == 0


def test_parse_mix():
    assert parse_mix(["web=0.6", "books=0.2", "code=0.2"]) == pytest.approx({"web": 0.6, "books": 0.2, "code": 0.2})
    assert parse_mix(["a=3", "b=1"]) == {"a": 0.75, "b": 0.25}
    for bad, msg in [("web", "expected NAME=WEIGHT"), ("=1", "expected NAME=WEIGHT"), ("web=lots", "not a number"),
                     ("web=-1", ">= 0"), ("web=nan", ">= 0")]:
        with pytest.raises(LmstackError, match=f"'{bad}'.*{msg}"):
            parse_mix([bad])
    with pytest.raises(LmstackError, match="'web=2'.*given twice"):
        parse_mix(["web=1", "web=2"])
    with pytest.raises(LmstackError, match="positive weight"):
        parse_mix(["web=0"])


def test_mixture_errors(sources):
    with pytest.raises(LmstackError, match="source 'code' has 300 tokens, fewer than seq_len"):
        Mixture(sources, {"web": 1, "books": 1, "code": 1}, seq_len=300, global_batch=4)
    with pytest.raises(LmstackError, match="'wiki', which is not a source"):
        Mixture(sources, {"web": 1, "books": 1, "code": 1, "wiki": 1}, seq_len=4, global_batch=4)
    with pytest.raises(LmstackError, match="'code' has no weight"):
        Mixture(sources, {"web": 1, "books": 1}, seq_len=4, global_batch=4)


def test_val_batches(tmp_path):
    ds = make_shards(tmp_path / "v", 103)
    batches = list(val_batches(ds, seq_len=10, batch=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]  # (103 - 1) // 10 = 10 windows
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x.flatten(), torch.arange(100)) and torch.equal(y, x + 1)  # each target once
    assert len(list(val_batches(ds, seq_len=10, batch=4, max_batches=2))) == 2
    with pytest.raises(LmstackError, match="fewer than seq_len"):
        list(val_batches(ds, seq_len=200, batch=1))
