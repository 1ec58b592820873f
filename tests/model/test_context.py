"""GPT-2's learned positions: the context check; and training forwards that torch.compile captures whole."""

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.model.config import preset
from lmstack.model.transformer import Transformer


def test_gpt2_rejects_positions_past_its_context():
    m = Transformer(preset("gpt2-tiny", max_seq_len=16))
    assert m(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 1024)
    with pytest.raises(LmstackError, match="sequence of 17 tokens exceeds the model's context of 16"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(LmstackError, match="sequence of 21 tokens exceeds"):  # explicit positions are read
        m(torch.zeros(1, 4, dtype=torch.long), positions=torch.arange(17, 21)[None])


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_training_forward_compiles_without_graph_breaks(name, bf16):
    # GPT-2's context check used to read positions.max(): a host sync and a graph break in every training step.
    # Under bf16 autocast a CPU's short-sequence attention runs in fp32, outside autocast (fp32_attention).
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = Transformer(preset(name, max_seq_len=16)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        explained = torch._dynamo.explain(m)(torch.zeros(2, 16, dtype=torch.long))
    assert explained.graph_break_count == 0, explained.break_reasons
