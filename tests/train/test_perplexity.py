"""Perplexity equals the Hugging Face guide's computation with transformers on the same weights."""

import math

import pytest
import torch

from lmstack.infer.logprobs import perplexity
from lmstack.lm import load
from tests.model.hf_fixtures import hf_model


def hf_sliding_ppl(model, ids, max_length, stride):
    # The loop of the transformers perplexity guide, counting exactly the labels the shifted loss scores.
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    seq_len = ids.size(1)
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        # The model shifts labels internally, so the first label of a window is never scored.
        num_valid = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * num_valid
        n_tokens += num_valid
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("max_length,stride", [(64, 64), (64, 16), (40, 25)])
def test_matches_transformers(tmp_path, family, max_length, stride):
    hf = hf_model(family)
    hf.save_pretrained(tmp_path)
    lm = load(tmp_path)
    torch.manual_seed(0)
    ids = torch.randint(0, 96, (1, 150))
    want = hf_sliding_ppl(hf, ids, max_length, stride)
    got = perplexity(lm.model, ids[0], max_length, stride)["perplexity"]
    assert abs(got - want) / want < 1e-4


def test_closed_form_uniform_model():
    # A model whose logits are all equal has perplexity exactly vocab_size.
    from lmstack.model.config import ModelConfig
    from lmstack.model.transformer import Transformer

    m = Transformer(ModelConfig(arch="llama", vocab_size=37, n_layer=1, n_head=2, d_model=8, max_seq_len=32))
    torch.nn.init.zeros_(m.lm_head.weight)
    res = perplexity(m, torch.randint(0, 37, (100,)), 32, 8)
    assert res["tokens"] == 99
    assert res["perplexity"] == pytest.approx(37.0, rel=1e-6)
