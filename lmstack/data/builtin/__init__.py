"""The built-in suite: lmstack's embedded default data, generated from a small seeded world.

`build_suite(out_dir, seed, size)` writes, from one world:

    world.json                       the world (people, pets, towns...), to rebuild the judge
    corpus/train.txt, corpus/val.txt pretraining text; val.txt = heldout documents and facts
    tasks/{train,validation,test}.jsonl        FLAN-style instruction records, 9 clusters
    tasks/safety_{train,validation,test}.jsonl harmful requests (refusals) and look-alikes
    preferences/rankings.jsonl, pairs.jsonl    K-way rankings and chosen/rejected pairs (train)
    preferences/rankings_test.jsonl, pairs_test.jsonl  the same from held-out prompts
    manifest.json                    sizes, counts, seed (also returned)

Same seed and size give the same bytes. Nothing here is third-party text. See
docs/builtin-suite.md for the world, the clusters, the templates and the annotators' rules.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from lmstack.data.records import write_jsonl
from lmstack.errors import LmstackError

from .annotators import (
    Annotator,
    agreement,
    assess,
    contradicts_world,
    is_refusal,
    judge_panel,
    make_preferences,
    win_rate,
)
from .corpus import read_documents, write_corpus
from .tasks import CLUSTERS, STYLES, TASKS, make_safety_records, make_task_records, tasks_of
from .templates import TEMPLATES
from .world import World

__all__ = ["CLUSTERS", "STYLES", "TASKS", "TEMPLATES", "Annotator", "World", "agreement", "assess", "build_suite",
           "contradicts_world", "is_refusal", "judge_panel", "main", "make_preferences", "make_safety_records",
           "make_task_records", "parse_size", "read_documents", "tasks_of", "win_rate"]

SUITE_VERSION = 1
PRESETS = {"tiny": 300_000, "small": 5_000_000, "medium": 50_000_000, "large": 300_000_000}
# World and data amounts by corpus size: (max corpus bytes, people, task items per split,
# safety requests per split, preference prompts (train, test)).
SCALES = [
    (1_000_000, dict(people=80, items=(48, 12, 16), safety=(40, 10, 20), prefs=(200, 60))),
    (20_000_000, dict(people=300, items=(300, 40, 60), safety=(200, 40, 60), prefs=(2000, 300))),
    (150_000_000, dict(people=1000, items=(1000, 100, 150), safety=(600, 100, 150), prefs=(8000, 600))),
    (float("inf"), dict(people=2000, items=(2000, 200, 200), safety=(1000, 200, 200), prefs=(16000, 1000))),
]
PANEL_SIZE, PANEL_FLIP = 3, 0.1
_UNITS = {"": 1, "b": 1, "kb": 1000, "k": 1000, "mb": 10**6, "m": 10**6, "gb": 10**9, "g": 10**9}


def parse_size(size) -> int:
    """Corpus bytes of a preset name ('tiny', 'small', 'medium', 'large') or '2MB', '500KB', 12345."""
    if isinstance(size, int):
        n = size
    else:
        s = str(size).strip().lower()
        if s in PRESETS:
            return PRESETS[s]
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", s)
        if not m or m.group(2) not in _UNITS:
            raise LmstackError(f"invalid size {size!r}: use {', '.join(PRESETS)} or a byte count like 2MB, 500KB")
        n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n < 10_000:
        raise LmstackError(f"invalid size {size!r}: the corpus needs at least 10KB")
    return n


def _scale(n_bytes: int) -> dict:
    return next(s for limit, s in SCALES if n_bytes <= limit)


def build_suite(out_dir: str | Path, seed: int = 0, size="tiny") -> dict:
    """Generate the whole suite into `out_dir` (see the module docstring); returns the manifest."""
    n_bytes = parse_size(size)
    sc = _scale(n_bytes)
    out = Path(out_dir)
    try:
        for sub in ("corpus", "tasks", "preferences"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmstackError(f"{out}: cannot create output folder ({e.strerror})") from e
    world = World.generate(seed, n_people=sc["people"])
    (out / "world.json").write_text(world.to_json() + "\n", encoding="utf-8")

    val_bytes = int(max(30_000, min(0.05 * n_bytes, 10_000_000)))
    corpus = {"train": write_corpus(world, out / "corpus" / "train.txt", n_bytes, seed),
              "val": write_corpus(world, out / "corpus" / "val.txt", val_bytes, seed, heldout=True)}

    tasks, safety, records = {}, {}, {}
    for split, n_items, n_safe in zip(("train", "validation", "test"), sc["items"], sc["safety"]):
        recs = make_task_records(world, split, n_items, seed=seed)
        write_jsonl(out / "tasks" / f"{split}.jsonl", recs)
        records[split] = recs
        by_task: dict = {}
        for r in recs:
            if r["style"] == "instruction":
                by_task[r["task"]] = by_task.get(r["task"], 0) + 1
        tasks[split] = {"records": len(recs), "items": sum(by_task.values()), "items_by_task": by_task}
        srecs = make_safety_records(world, split, n_safe, seed=seed)
        write_jsonl(out / "tasks" / f"safety_{split}.jsonl", srecs)
        records[f"safety_{split}"] = srecs
        safety[split] = {"records": len(srecs), "unsafe": sum(r["unsafe"] for r in srecs)}

    panel = judge_panel(world, PANEL_SIZE, PANEL_FLIP, seed)
    prefs = {}
    for split, n_prompts, suffix in (("train", sc["prefs"][0], ""), ("test", sc["prefs"][1], "_test")):
        rng = random.Random(f"prefprompts:{split}:{seed}")
        pool = [r for r in records[split] if r["style"] == "instruction"]
        safe = records[f"safety_{split}"]
        # About a quarter safety prompts, so a reward model learns refusals as well as correctness.
        n_safety = min(len(safe), n_prompts // 4)
        chosen = rng.sample(pool, min(len(pool), n_prompts - n_safety)) + rng.sample(safe, n_safety)
        rankings, pairs = make_preferences(world, chosen, panel, k=4, seed=seed, split=split)
        write_jsonl(out / "preferences" / f"rankings{suffix}.jsonl", rankings)
        write_jsonl(out / "preferences" / f"pairs{suffix}.jsonl", pairs)
        prefs[split] = {"prompts": len(rankings), "pairs": len(pairs), "unsafe_prompts": sum(r["unsafe"] for r in rankings)}

    manifest = {
        "format": "lmstack-builtin", "version": SUITE_VERSION, "seed": seed,
        "size": size if isinstance(size, str) else str(size), "target_bytes": n_bytes,
        "world": {"people": len(world.people), "towns": len(world.towns), "countries": len(world.countries),
                  "rivers": len(world.rivers),
                  "people_by_split": {s: len(world.pool(s)) for s in ("train", "validation", "test", "heldout")}},
        "corpus": corpus, "tasks": tasks, "safety": safety, "preferences": prefs,
        "clusters": {c: tasks_of(c) for c in CLUSTERS}, "styles": list(STYLES),
        "annotators": [{"name": a.name, "flip_prob": a.flip_prob, "bias": a.bias} for a in panel],
        "files": {"world": "world.json", "corpus_train": "corpus/train.txt", "corpus_val": "corpus/val.txt",
                  **{f"tasks_{s}": f"tasks/{s}.jsonl" for s in ("train", "validation", "test")},
                  **{f"safety_{s}": f"tasks/safety_{s}.jsonl" for s in ("train", "validation", "test")},
                  "rankings": "preferences/rankings.jsonl", "pairs": "preferences/pairs.jsonl",
                  "rankings_test": "preferences/rankings_test.jsonl", "pairs_test": "preferences/pairs_test.jsonl"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def summary(manifest: dict) -> str:
    c, t, p = manifest["corpus"], manifest["tasks"], manifest["preferences"]
    lines = [
        f"built-in suite (seed {manifest['seed']}, size {manifest['size']})",
        f"  world: {manifest['world']['people']} people, {manifest['world']['towns']} towns",
        f"  corpus: train {c['train']['bytes'] / 1e6:.2f} MB ({c['train']['documents']} docs), "
        f"val {c['val']['bytes'] / 1e6:.2f} MB ({c['val']['documents']} docs)",
        f"  tasks: {len(TASKS)} tasks in {len(CLUSTERS)} clusters; items train/validation/test = "
        f"{t['train']['items']}/{t['validation']['items']}/{t['test']['items']} (x{len(STYLES)} styles)",
        "  safety: " + ", ".join(f"{s} {v['records']} ({v['unsafe']} unsafe)" for s, v in manifest["safety"].items()),
        f"  preferences: train {p['train']['prompts']} rankings / {p['train']['pairs']} pairs, "
        f"test {p['test']['prompts']} / {p['test']['pairs']}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """`lmstack data builtin --out DIR --seed N --size S`: build the suite and print a summary."""
    ap = argparse.ArgumentParser(prog="lmstack data builtin", description="Generate lmstack's built-in suite.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="world seed (same seed and size -> same bytes)")
    ap.add_argument("--size", default="tiny",
                    help="corpus size: tiny (~300KB), small (~5MB), medium (~50MB), large (~300MB) or bytes like 2MB")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        manifest = build_suite(args.out, seed=args.seed, size=args.size)
    except LmstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(manifest))
    print(f"  wrote {args.out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
