"""`lmstack demo`: the smallest end-to-end run, in about a minute on a laptop CPU.

Generates the built-in suite's corpus, trains a byte-level BPE tokenizer on it, pretrains a tiny
Llama-style model by next-token prediction, saves it as a checkpoint folder and decodes from it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch


def run_demo(out: str | Path, steps: int = 300, seed: int = 0) -> dict:
    from tqdm import tqdm

    from lmstack.data.builtin import build_suite
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams
    from lmstack.model.checkpoint import LM
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.tokenizer import train_bpe

    out = Path(out)
    torch.manual_seed(seed)
    print(f"[1/4] built-in suite -> {out / 'suite'}")
    build_suite(out / "suite", seed=seed, size="tiny")
    corpus = out / "suite" / "corpus" / "train.txt"

    print("[2/4] byte-level BPE tokenizer, vocab 1024")
    tok = train_bpe([str(corpus)], vocab_size=1024)
    data = torch.tensor(tok.encode(corpus.read_text(encoding="utf-8")), dtype=torch.long)
    print(f"      {len(data):,} training tokens")

    cfg = preset("llama-mini", vocab_size=tok.vocab_size, max_seq_len=256, bos_token_id=tok.bos_id,
                 eos_token_id=tok.stop_ids, pad_token_id=tok.pad_id)
    model = Transformer(cfg)
    print(f"[3/4] pretraining a {model.num_params() / 1e6:.2f}M-parameter llama-style model, {steps} steps")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batch, seq = 16, 128
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), unit="step")
    t0, loss_v = time.time(), float("nan")
    for step in bar:
        lr = 3e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        x = torch.stack([data[s:s + seq] for s in starts])
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_v = loss.item()
        bar.set_postfix(loss=f"{loss_v:.3f}", tok_s=f"{(step + 1) * batch * seq / (time.time() - t0):,.0f}")
    model.eval()
    lm = LM(model, tok, {"eos_token_id": tok.stop_ids})
    lm.save(out / "model", stage="demo", metrics={"final_loss": loss_v, "perplexity": math.exp(loss_v)})
    print(f"      final loss {loss_v:.3f} (perplexity {math.exp(loss_v):.1f}); checkpoint {out / 'model'}")

    print("[4/4] decoding")
    prompts = ["The ", "Once upon a time", "Q: What is 3 plus 4?\nA:"]
    ids = [tok.encode(p) for p in prompts]
    for name, sp in (("greedy", SamplingParams(max_new_tokens=40, temperature=0)),
                     ("top-p 0.9, T 0.8", SamplingParams(max_new_tokens=40, temperature=0.8, top_p=0.9, seed=seed))):
        print(f"  -- {name}")
        for p, o in zip(prompts, generate(model, ids, sp, tok)):
            print(f"  {p!r} -> {o.text!r}")
    return {"final_loss": loss_v, "checkpoint": str(out / "model")}
