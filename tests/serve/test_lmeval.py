"""lm-evaluation-harness's `local-completions` backend against the server gives lmstack's own scores.

The task is a multiple-choice JSONL file scored offline: the harness tokenises through the server's
/tokenize endpoints (its remote tokenizer backend), sends token-id prompts with echo + logprobs,
and sums the continuation's log-probabilities, as it does against vLLM or OpenAI.
"""

import json
import logging

import pytest

from lmstack.infer.logprobs import loglikelihood

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("tenacity")  # lm-eval[api]: the API backends need tenacity, aiohttp, requests
pytest.importorskip("aiohttp")

QUESTIONS = [
    ("Q: What is 3 plus 4?\nA:", ["7", "8", "12"], 0),
    ("The small cat sat on the", ["red mat", "blue sky", "old dog"], 0),
    ("Mina lives in", ["Porto", "Seoul", "the sea"], 0),
    ("She has a dog named", ["Rex", "Mina", "Cat"], 0),
    ("def add(a, b):\n    return", ["a + b", "a - b", "None"], 0),
    ("고양이는", ["작다.", "크다.", "빠르다."], 0),
    ("강아지는", ["크다.", "작다.", "느리다."], 0),
    ("Emoji:", ["🙂🚀", "🚀🙂", "none"], 0),
    ("The cat is", ["happy.", "sad.", "blue."], 0),
    ("Numbers: 12345", ["67890.", "11111.", "abc."], 0),
    ("Q: What is 2 plus 2?\nA:", ["5", "4", "22"], 1),
    ("The red", ["mat", "cat", "sky"], 2),
]


def test_lm_eval_local_completions_matches_lmstack_scoring(server, tiny_lm, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "serve_mc.yaml").write_text(f"""task: lmstack_serve_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    out = simple_evaluate(
        model="local-completions",
        model_args={"base_url": server.v1 + "/completions", "model": "tiny", "tokenizer_backend": "remote",
                    "num_concurrent": 2, "max_retries": 1, "max_length": 128, "batch_size": 4},
        tasks=["lmstack_serve_mc"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
        bootstrap_iters=0,
    )
    harness_acc = out["results"]["lmstack_serve_mc"]["acc,none"]

    # lmstack's own scoring of the same requests: the harness puts " " between context and choice.
    pairs = [(q, " " + c) for q, choices, _ in QUESTIONS for c in choices]
    ll = [r.logprob for r in loglikelihood(tiny_lm.model, tiny_lm.tokenizer, pairs)]
    k, correct = 0, 0
    for _, choices, answer in QUESTIONS:
        scores = ll[k:k + len(choices)]
        correct += max(range(len(choices)), key=scores.__getitem__) == answer
        k += len(choices)
    assert harness_acc == pytest.approx(correct / len(QUESTIONS))
    # And request by request: the harness's summed log-probabilities are lmstack's.
    samples = sorted(out["samples"]["lmstack_serve_mc"], key=lambda s: s["doc_id"])
    got = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    assert got == pytest.approx(ll, abs=1e-3)


def test_lm_eval_local_chat_completions_generates_what_lmstack_generates(server, tiny_lm, tiny_ckpt, tmp_path,
                                                                        monkeypatch):
    """lm-eval's `local-chat-completions` runs a generation task (greedy, until a newline) against the server,
    naming the model by its path as vLLM users do; every answer is lmstack's own greedy chat answer."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    qs = [("What is 3 plus 4?", "7"), ("Name a cat.", "Mina"), ("고양이는?", "작다"), ("Say hi", "hi")]
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in qs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "serve_gen.yaml").write_text(f"""task: lmstack_serve_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    out = simple_evaluate(
        model="local-chat-completions",
        model_args={"base_url": server.v1 + "/chat/completions", "model": str(tiny_ckpt), "num_concurrent": 2,
                    "max_retries": 1},
        tasks=["lmstack_serve_gen"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
        apply_chat_template=True, bootstrap_iters=0,
    )
    samples = sorted(out["samples"]["lmstack_serve_gen"], key=lambda s: s["doc_id"])
    got = [s["resps"][0][0] for s in samples]
    tok = tiny_lm.tokenizer
    want = [c.text for c in generate(tiny_lm.model, [tok.encode_chat([{"role": "user", "content": q}], True)[0]
                                                     for q, _ in qs],
                                     SamplingParams(max_new_tokens=8, temperature=0.0, stop=["\n"]), tok)]
    assert got == want and any(want)
    assert "exact_match,none" in out["results"]["lmstack_serve_gen"]
