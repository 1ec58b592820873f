"""`lmstack data builtin|prepare`: the built-in suite, and token shards (lmstack/data/prepare.py)."""

from __future__ import annotations

import argparse
import os
import time

from lmstack.data.builtin import build_suite, summary
from lmstack.data.prepare import DOC_SPLITS, prepare


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="datasets: the built-in suite, token shards")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("builtin", help="generate the built-in suite (world, corpus, tasks, preferences)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--seed", type=int, default=0, help="world seed (same seed and size -> same bytes)")
    b.add_argument("--size", default="tiny",
                   help="tiny (~300KB corpus), small (~5MB), medium (~50MB), large (~300MB) or a size like 2MB")
    b.set_defaults(func=cmd_builtin)
    add_prepare_parser(dsub)


def cmd_builtin(args) -> int:


    t0 = time.time()
    print(summary(build_suite(args.out, seed=args.seed, size=args.size)))
    print(f"wrote {args.out} in {time.time() - t0:.1f}s")
    return 0


def add_prepare_parser(data_subparsers) -> argparse.ArgumentParser:
    p = data_subparsers.add_parser(
        "prepare", help="tokenise text files or HF datasets once into memory-mapped token shards",
        description="Tokenise corpora into train/val token shards (train.bin/.idx, val.bin/.idx, manifest.json).")
    p.add_argument("inputs", nargs="+",
                   help="files (.txt .md .jsonl .parquet, optionally .gz), folders, globs or hf:NAME[:CONFIG][:SPLIT]")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder, tokenizer.json or checkpoint folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet or dataset column (default: text)")
    p.add_argument("--doc-split", choices=DOC_SPLITS, default=None,
                   help="how .txt/.md files split into documents (default: blank_line for .txt, file for .md)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="fraction of documents held out for validation (default: 0.01)")
    p.add_argument("--val-inputs", nargs="*", default=None,
                   help="explicit validation files instead of a random fraction")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="tokenising processes (default: min(4, CPUs))")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed records, counting them, instead of failing")
    p.add_argument("--no-eos", action="store_true", help="do not put the eos token after each document")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
    return p


def cmd_prepare(args) -> int:

    res = prepare(args.inputs, args.tokenizer, args.out, text_field=args.text_field, doc_split=args.doc_split,
                  val_fraction=args.val_fraction, val_inputs=args.val_inputs or None, seed=args.seed,
                  workers=args.workers, skip_bad=args.skip_bad, eos=not args.no_eos,
                  progress=not getattr(args, "no_progress", False))
    m = res.manifest
    print(f"wrote {res.out} ({m['dtype']}, vocab {m['vocab_size']:,}, {len(m['sources'])} sources)")
    for name, s in m["splits"].items():
        print(f"  {name:<5} {s['tokens']:>14,} tokens {s['documents']:>11,} documents")
    if m["skipped_total"]:
        print(f"  skipped {m['skipped_total']:,} malformed records, e.g.:")
        for ex in m["skipped"][:5]:
            print(f"    {ex['path']}:{ex['line']}: {ex['reason']}")
    print(f"  {res.text_bytes / 1e6:.1f} MB of text in {res.seconds:.1f}s ({res.mb_per_s:.2f} MB/s)")
    return 0
