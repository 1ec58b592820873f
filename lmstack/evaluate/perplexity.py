"""Perplexity: PPL = exp(mean negative log-likelihood per token), with a sliding window for long texts.

Windows of `max_length` tokens advance by `stride`; each window scores only the tokens the previous
window did not, with up to max_length - stride tokens of context before them (the method of the
Hugging Face perplexity guide, so numbers are comparable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError


@torch.inference_mode()
def perplexity(model, ids: list[int] | torch.Tensor, max_length: int | None = None, stride: int | None = None,
               n_bytes: int | None = None) -> dict:
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise LmstackError("perplexity: need at least 2 tokens")
    max_length = max_length or model.cfg.max_seq_len
    if max_length > model.cfg.max_seq_len:
        raise LmstackError(f"perplexity: --max-length {max_length} exceeds the model's context {model.cfg.max_seq_len}")
    stride = stride or max_length
    if not (0 < stride <= max_length):
        raise LmstackError(f"perplexity: stride must be in [1, max_length={max_length}], got {stride}")
    device = next(model.parameters()).device
    n = ids.numel()
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = ids[begin:end].to(device)[None]
        logits = model(window).float()[0, :-1]
        targets = window[0, 1:]
        # Position of each target in the text; score only those not scored by an earlier window.
        pos = torch.arange(begin + 1, end, device=device)
        keep = pos >= max(prev_end, 1)
        if keep.any():
            lp = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
            nll += lp.item()
            count += int(keep.sum())
        prev_end = end
        if end == n:
            break
    mean = nll / count
    out = {"nll_sum": nll, "tokens": count, "nll_per_token": mean, "perplexity": math.exp(mean)}
    if n_bytes:
        out["bits_per_byte"] = nll / math.log(2) / n_bytes
    return out


def perplexity_of_text(lm, text: str, max_length=None, stride=None) -> dict:
    lm._need_tokenizer()
    ids = lm.tokenizer.encode(text)
    return perplexity(lm.model, ids, max_length, stride, n_bytes=len(text.encode("utf-8")))


def add_parser(eval_sub) -> None:
    p = eval_sub.add_parser("perplexity", help="perplexity of a model on a text file or prepared token data")
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="a text file")
    src.add_argument("--data", help="a folder written by `lmstack data prepare`")
    p.add_argument("--split", default="val", help="with --data: train or val")
    p.add_argument("--max-length", type=int, default=None, help="window length (default: the model's context)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: max-length, no overlap)")
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many tokens")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    import json
    from pathlib import Path

    import lmstack

    lm = lmstack.load(args.model, dtype=args.dtype)
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError) as e:
            raise LmstackError(f"{args.file}: {e.__class__.__name__}: {e}") from None
        lm._need_tokenizer()
        ids = lm.tokenizer.encode(text)
        n_bytes = len(text.encode("utf-8"))
        if args.max_tokens:
            n_bytes = int(n_bytes * min(1.0, args.max_tokens / max(1, len(ids))))
            ids = ids[: args.max_tokens]
    else:
        from lmstack.data.shards import TokenDataset

        ds = TokenDataset(args.data, args.split)
        ids = torch.from_numpy(ds.tokens[: args.max_tokens or ds.n_tokens].astype("int64"))
        n_bytes = None
    res = perplexity(lm.model, ids, args.max_length, args.stride, n_bytes=n_bytes)
    print(json.dumps(res, indent=2))
    return 0
