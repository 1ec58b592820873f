import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

_TEXT = [
    "The small cat sat on the red mat. The cat is happy.",
    "Mina lives in Porto. She has a dog named Rex. 고양이는 작다. 강아지는 크다.",
    "def add(a, b):\n    return a + b\n",
    "Q: What is 3 plus 4?\nA: 7\n",
    "Emoji: 🙂🚀 and numbers 12345 67890.",
] * 40


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lmstack.tokenizer import train_bpe

    return train_bpe(iter(_TEXT), vocab_size=300, min_frequency=1)


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """A random llama-tiny with a real trained tokenizer: what engine and CLI tests decode with."""
    from lmstack.lm import LM
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer

    tok = tiny_tokenizer
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=tok.vocab_size, max_seq_len=128, bos_token_id=tok.bos_id,
                 eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, init_std=0.3)
    return LM(Transformer(cfg).eval(), tok, {})


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_lm.save(path, stage="test")
    return path
