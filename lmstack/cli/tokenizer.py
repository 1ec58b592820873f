"""`lmstack tokenizer {train,encode,decode}`."""

from __future__ import annotations

import json
import sys

from lmstack.errors import LmstackError
from lmstack.tokenizer.bpe import DEFAULT_SPECIAL_TOKENS, train_bpe
from lmstack.tokenizer.core import Tokenizer


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train, or encode/decode with, a tokenizer")
    sub = p.add_subparsers(dest="tokenizer_command", required=True)

    t = sub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    t.add_argument("--files", nargs="+", required=True, help="text files or glob patterns (quote them)")
    t.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, special ones included")
    t.add_argument(
        "--special", nargs="*", default=[], help="special tokens beyond " + " ".join(DEFAULT_SPECIAL_TOKENS)
    )
    t.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge (default: 2)")
    t.add_argument("--out", required=True, help="folder to write tokenizer.json and tokenizer_config.json to")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="print token ids of text (argument or stdin)")
    _add_tokenizer_arg(e)
    e.add_argument("text", nargs="?", help="text to encode; read from stdin when omitted")
    e.add_argument("--add-bos", action="store_true", help="prepend the bos token")
    e.add_argument(
        "--chat", action="store_true", help="input is a JSON list of messages; prints ids, then mask"
    )
    e.add_argument(
        "--add-generation-prompt", action="store_true", help="with --chat: end with the assistant prompt"
    )
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="print the text of token ids (arguments or stdin)")
    _add_tokenizer_arg(d)
    d.add_argument("ids", nargs="*", help="token ids; read from stdin when omitted")
    d.add_argument("--skip-special", action="store_true", help="leave special tokens out of the text")
    d.set_defaults(func=cmd_decode)


def _add_tokenizer_arg(p) -> None:
    p.add_argument("--tokenizer", required=True, help="tokenizer folder, tokenizer.json, or model checkpoint folder")


def cmd_train(args) -> None:
    specials = list(dict.fromkeys(DEFAULT_SPECIAL_TOKENS + list(args.special or [])))
    tok = train_bpe(
        args.files, args.vocab_size, specials, min_frequency=args.min_frequency, show_progress=True
    )
    tok.save(args.out)
    print(f"wrote {args.out} (vocab_size {tok.vocab_size})")


def cmd_encode(args) -> None:
    tok = Tokenizer.load(args.tokenizer)
    # Text is encoded exactly as given, trailing newline from stdin included, since whitespace is content
    text = args.text if args.text is not None else sys.stdin.read()
    if args.chat:
        try:
            messages = json.loads(text)
        except json.JSONDecodeError as e:
            raise LmstackError(f"tokenizer encode --chat: input is not JSON ({e})") from None
        if not isinstance(messages, list):
            raise LmstackError(
                "tokenizer encode --chat: input must be a JSON list of {role, content} messages"
            )
        ids, mask = tok.encode_chat(messages, add_generation_prompt=args.add_generation_prompt)
        print(" ".join(map(str, ids)))
        print(" ".join(map(str, mask)))
    else:
        print(" ".join(map(str, tok.encode(text, add_bos=True if args.add_bos else None))))


def cmd_decode(args) -> None:
    tok = Tokenizer.load(args.tokenizer)
    words = args.ids if args.ids else sys.stdin.read().split()
    try:
        ids = [int(w) for w in words]
    except ValueError:
        raise LmstackError(f"tokenizer decode: ids must be integers, got {words!r:.80}") from None
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise LmstackError(f"tokenizer decode: id {bad[0]} is outside the vocabulary (size {tok.vocab_size})")
    sys.stdout.write(tok.decode(ids, skip_special=args.skip_special) + "\n")
