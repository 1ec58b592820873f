"""`lmstack demo`: the smallest end-to-end run, about a minute on a laptop CPU.

Generates the built-in suite's corpus, trains a byte-level BPE tokenizer on it, prepares token shards,
pretrains a tiny Llama-style model with the pretraining recipe, evaluates its perplexity on held-out
documents and decodes from it.
"""

from __future__ import annotations

from pathlib import Path

from lmstack.data.defaults import builtin_token_data
from lmstack.evaluate.perplexity import perplexity_of_text
from lmstack.lm import load
from lmstack.train import pretrain


def run_demo(out: str | Path, steps: int = 300, seed: int = 0) -> dict:
    out = Path(out)
    print(f"[1/4] built-in suite, tokenizer and token shards -> {out / 'data'}")
    tokens = builtin_token_data(out / "data", size="tiny", seed=seed, vocab_size=1024)
    print(f"[2/4] pretraining llama-mini for {steps} steps")
    res = pretrain.run(pretrain.PretrainConfig(
        out=str(out / "pretrain"), data=[str(tokens)], preset="llama-mini", seq_len=128, micro_batch=16, steps=steps,
        lr=3e-3, warmup=30, eval_interval=max(steps // 3, 1), ckpt_interval=max(steps // 2, 1), seed=seed))
    s = res.summary
    print(f"      final loss {s['final_loss']:.3f}, validation perplexity {s['val_ppl']:.2f}, "
          f"{s['tokens_per_s'] or 0:,.0f} tokens/s; curve {out / 'pretrain' / 'loss_curve.png'}")
    lm = load(res.artifacts["model"])
    val_text = (out / "data" / "suite" / "corpus" / "val.txt").read_text(encoding="utf-8")
    ppl = perplexity_of_text(lm, val_text, max_length=128, stride=64)
    print(f"[3/4] held-out perplexity (sliding window 128/64): {ppl['perplexity']:.2f} "
          f"({ppl['tokens']:,} tokens, {ppl['bits_per_byte']:.3f} bits/byte)")
    print("[4/4] decoding")
    prompts = ["Bebehe is a", "On Monday morning,", "Rating: 5/5\n"]
    for name, kw in (("greedy", dict(temperature=0)),
                     ("top-p 0.9, T 0.8", dict(temperature=0.8, top_p=0.9, seed=seed)),
                     ("beam search, 4 beams", dict(num_beams=4))):
        print(f"  -- {name}")
        for p, text in zip(prompts, lm.generate(prompts, max_new_tokens=32, **kw)):
            print(f"  {p!r} -> {text!r}")
    return {"pretrain": s, "perplexity": ppl}
