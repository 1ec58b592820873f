"""`lmstack data prepare`: the command line over lmstack/data/prepare.py."""

from __future__ import annotations

import argparse
import os

from lmstack.data.prepare import DOC_SPLITS


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
    from lmstack.data.prepare import prepare

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
