"""`lmstack generate` and `lmstack chat`: the generation engine from a terminal."""

from __future__ import annotations

import sys

from lmstack.errors import LmstackError
from lmstack.infer.engine import generate, stream
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import load
from lmstack.options import add_weights_args


def add_sampling_args(p) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default: 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (default: 0, off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0, off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability (default: 0, off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="transformers' penalty on tokens already seen (default: 1.0, off)")
    g.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="OpenAI's penalty per earlier occurrence in the output (default: 0)")
    g.add_argument("--presence-penalty", type=float, default=0.0,
                   help="OpenAI's penalty on tokens present in the output (default: 0)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (default: unseeded)")
    g.add_argument("--num-beams", type=int, default=1, help="beam search width (default: 1, no beam search)")
    g.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam scores divided by length ** this (default: 1.0)")
    g.add_argument("--early-stopping", default="false", choices=["true", "false", "never"],
                   help="when beam search stops, as in transformers (default: false)")


def sampling_from_args(args):

    es = {"true": True, "false": False, "never": "never"}[args.early_stopping]
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, stop=args.stop, seed=args.seed, num_beams=args.num_beams,
        length_penalty=args.length_penalty, early_stopping=es,
    )


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="complete prompts with a model")
    g.add_argument("--model", required=True, help="checkpoint folder, .gguf file or hub name")
    g.add_argument("--prompt", action="append", help="prompt text (repeatable: one batch); stdin if omitted")
    g.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    add_weights_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat in the terminal (/reset, /exit)")
    c.add_argument("--model", required=True, help="checkpoint folder, .gguf file or hub name")
    c.add_argument("--system", default=None, help="system prompt")
    add_weights_args(c)
    add_sampling_args(c)
    c.set_defaults(func=cmd_chat, max_new_tokens=256)


def cmd_generate(args) -> int:

    sp = sampling_from_args(args)
    lm = load(args.model, dtype=args.dtype, quantize=args.quantize)
    lm._need_tokenizer()
    prompts = args.prompt if args.prompt else [sys.stdin.read()]
    ids = [lm.chat_ids([{"role": "user", "content": p}]) if args.chat else lm.encode(p) for p in prompts]
    if args.stream:
        if len(ids) > 1 or sp.num_beams > 1:
            raise LmstackError("--stream takes one prompt and no beam search")
        sys.stdout.write(prompts[0] if not args.chat else "")
        for ev in stream(lm.model, ids, sp, lm.tokenizer):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    outs = generate(lm.model, ids, sp, lm.tokenizer)
    for p, o in zip(prompts, outs):
        print(o.text if args.chat else p + o.text)
        if len(outs) > 1:
            print("---")
    return 0


def cmd_chat(args) -> int:

    sp = sampling_from_args(args)
    lm = load(args.model, dtype=args.dtype, quantize=args.quantize)
    lm._need_tokenizer()
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} - /reset starts over, /exit quits")
    while True:
        if interactive:
            sys.stdout.write("\n> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            messages = list(system)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        ids = lm.chat_ids(messages)
        if len(ids) + 1 >= lm.config.max_seq_len:
            # Keep the conversation inside the context: drop the oldest turns, keep the system prompt.
            while len(messages) > len(system) + 1 and len(lm.chat_ids(messages)) + 1 >= lm.config.max_seq_len:
                messages = system + messages[len(system) + 2:]
            ids = lm.chat_ids(messages)
        reply = []
        for ev in stream(lm.model, [ids], sp, lm.tokenizer):
            reply.append(ev.text)
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0
