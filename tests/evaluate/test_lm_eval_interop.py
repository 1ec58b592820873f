"""Interop: lmstack's harness and lm-evaluation-harness (its Hugging Face backend) score the same
checkpoint on the same offline JSONL multiple-choice task identically: same per-item predictions
(acc and acc_norm), equal accuracies, log-likelihoods within float tolerance.

Reproduce by hand: see docs/evaluation.md, "Agreement with lm-evaluation-harness".
"""

import json

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")

ITEMS = [
    ("The cat sat on the", ["red mat.", "blue sky.", "dog"], 0),
    ("Q: What is 3 plus 4?\nA:", ["7", "12345", "cat"], 0),
    ("Mina lives in", ["Porto.", "the small cat sat on the mat", "a"], 0),
    ("The small cat is", ["happy.", "red", "sat on the mat. The cat is happy."], 1),
    ("Emoji: and numbers", ["12345 67890.", "the", "def add(a, b):"], 2),
    ("def add(a, b):\n    return", ["a + b", "a - b", "pass"], 0),
]


def _write_task(tmp_path):
    data = tmp_path / "interop.jsonl"
    with open(data, "w") as f:
        for q, choices, label in ITEMS:
            f.write(json.dumps({"question": q, "choices": choices, "label": label}) + "\n")
    tdir = tmp_path / "lm_eval_tasks"
    tdir.mkdir()
    (tdir / "lmstack_interop.yaml").write_text(
        "task: lmstack_interop\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        'target_delimiter: " "\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (tmp_path / "lmstack_interop.yaml").write_text(
        "task: lmstack_interop\ntype: multiple_choice\n"
        f"source: {{jsonl: {data}}}\n"
        'prompt: "{{ question }}"\nchoices: choices\ntarget: label\ntarget_delimiter: " "\nmetrics: [acc, acc_norm]\n')
    return tdir, tmp_path / "lmstack_interop.yaml"


def test_lmstack_matches_lm_eval_harness(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lmstack.backends import get_backend
    from lmstack.evaluate import load_task, run_task

    tdir, ours_cfg = _write_task(tmp_path)
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={tiny_ckpt},dtype=float32", tasks=["lmstack_interop"],
                             task_manager=TaskManager(include_path=str(tdir)), log_samples=True, batch_size=32,
                             device="cpu", num_fewshot=0)
    samples = sorted(theirs["samples"]["lmstack_interop"], key=lambda s: s["doc_id"])
    ours = run_task(load_task(str(ours_cfg)), get_backend(str(tiny_ckpt)), bootstrap_iters=10)
    assert len(samples) == len(ours.samples) == len(ITEMS)
    for s, o in zip(samples, ours.samples):
        their_ll = [r[0] for r in s["filtered_resps"]]
        # The same requests: our context and " " + choice continuations.
        assert [tuple(a) for a in s["arguments"]] == [(o["prompt"], " " + c) for c in o["choices"]]
        assert o["logprobs"] == pytest.approx([float(x) for x in their_ll], abs=2e-4)
        assert o["acc"] == s["acc"] and o["acc_norm"] == s["acc_norm"]
    res = theirs["results"]["lmstack_interop"]
    assert ours.metrics["acc"] == pytest.approx(res["acc,none"])
    assert ours.metrics["acc_norm"] == pytest.approx(res["acc_norm,none"])
