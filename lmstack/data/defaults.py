"""The embedded default data: the built-in suite's corpus, a tokenizer trained on it, token shards.

Each step is skipped when its output already exists, so pipelines (demo, scaling sweeps, `lmstack run`)
can call this freely and a resumed run does not redo finished work.
"""

from __future__ import annotations

from pathlib import Path

from lmstack.data.builtin import build_suite
from lmstack.data.prepare import prepare
from lmstack.tokenizer import Tokenizer, train_bpe


def builtin_token_data(out: str | Path, size: str = "tiny", seed: int = 0, vocab_size: int = 2048,
                       progress: bool = False) -> Path:
    """out/suite (the suite), out/tokenizer (byte-level BPE), out/tokens (prepared shards). Returns out/tokens."""
    out = Path(out)
    suite, tok_dir, tokens = out / "suite", out / "tokenizer", out / "tokens"
    if not (suite / "manifest.json").exists():
        build_suite(suite, seed=seed, size=size)
    if not (tok_dir / "tokenizer.json").exists():
        train_bpe([str(suite / "corpus" / "train.txt")], vocab_size=vocab_size).save(tok_dir)
    if not (tokens / "manifest.json").exists():
        prepare([str(suite / "corpus" / "train.txt")], Tokenizer.load(tok_dir), tokens,
                val_inputs=[str(suite / "corpus" / "val.txt")], seed=seed, workers=1, progress=progress)
    return tokens
