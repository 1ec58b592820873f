"""The chunked log-prob kernel equals the one-shot log-softmax, values and gradients, and really chunks."""

from __future__ import annotations

import copy

import pytest
import torch

from lmstack.model import logprobs
from lmstack.model.config import preset
from lmstack.model.logprobs import head_logprobs, target_logprobs
from lmstack.model.transformer import Transformer


@pytest.mark.parametrize("temperature,entropy", [(1.0, False), (0.7, True)])
def test_chunks_equal_one_shot_values_and_gradients(temperature, entropy):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(3, 7, 16, requires_grad=True)
    t = torch.randint(0, 50, (3, 7))
    head2, h2 = copy.deepcopy(head), h.detach().clone().requires_grad_()
    lp, ent = target_logprobs(head(h), t, temperature, entropy)
    lp2, ent2 = head_logprobs(head2, h2, t, temperature, entropy, chunk_elements=50 * 4)  # 4 positions a chunk
    assert lp2.shape == (3, 7) and torch.allclose(lp, lp2, atol=1e-6)
    loss, loss2 = lp.sum(), lp2.sum()
    if entropy:
        assert torch.allclose(ent, ent2, atol=1e-6)
        loss, loss2 = loss + ent.sum(), loss2 + ent2.sum()
    loss.backward()
    loss2.backward()
    assert torch.allclose(h.grad, h2.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, head2.weight.grad, atol=1e-6)


def test_the_model_returns_target_logprobs_a_chunk_at_a_time(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny", vocab_size=64))
    ids = torch.randint(0, 64, (2, 12))
    ref, _ = target_logprobs(model(ids[:, :-1]), ids[:, 1:])
    rows = []
    model.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 64 * 5)  # 5 positions of the 22
    lp, ent = model(ids[:, :-1], targets=ids[:, 1:])
    assert ent is None and torch.allclose(lp, ref, atol=1e-6)
    assert max(rows) == 5 and sum(rows) == 22  # no full-vocabulary logits for all positions at once
    rows.clear()
    lp.sum().backward()  # backward recomputes each chunk (checkpointing) instead of keeping its logits
    assert rows and max(rows) == 5
