import json
import os

import pytest

from lmstack.backends import Backend, LLResult, as_sampling


class ScriptedBackend(Backend):
    """A backend whose answers are written by the test: `ll(context, continuation) -> logprob` and
    `gen(prompt, sampling) -> text`. Records every call."""

    name = "scripted"

    def __init__(self, ll=None, gen=None):
        self.ll, self.gen = ll, gen
        self.ll_calls, self.gen_calls = [], []

    def loglikelihood(self, requests):
        self.ll_calls += list(requests)
        return [LLResult(float(self.ll(c, x)), False, 1) for c, x in requests]

    def loglikelihood_rolling(self, texts):
        return [LLResult(-float(len(t)), False, len(t.split())) for t in texts]

    def generate(self, prompts, sampling=None):
        params = sampling if isinstance(sampling, list) else [as_sampling(sampling)] * len(prompts)
        self.gen_calls += list(zip(prompts, params))
        return [self.gen(p, s) for p, s in zip(prompts, params)]

    def chat_context(self, messages):
        return "<user>" + messages[-1]["content"] + "<assistant>"


@pytest.fixture
def scripted():
    return ScriptedBackend


@pytest.fixture(scope="session", autouse=True)
def lmstack_cache(tmp_path_factory):
    """The built-in suite is built once per session into a temporary cache."""
    d = tmp_path_factory.mktemp("lmstack_cache")
    old = os.environ.get("LMSTACK_CACHE")
    os.environ["LMSTACK_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("LMSTACK_CACHE", None)
    else:
        os.environ["LMSTACK_CACHE"] = old


@pytest.fixture(scope="session")
def suite_dir(lmstack_cache):
    from lmstack.evaluate.sources import builtin_dir

    return builtin_dir(0, "tiny")


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


# Small records in the formats of the Hugging Face datasets the ready configs read.
FIXTURES = {
    "hellaswag": [
        {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
         "ctx_b": "then", "ctx": "", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."],
         "label": "3"},
        {"ind": 9, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a mat [title] Shake the mat.", "ctx_b": "[step] take it outside",
         "ctx": "", "endings": ["and shake it [substeps] hard.", "then eat it.", "and paint it.", "and sell it."], "label": "0"},
    ],
    "arc": [
        {"id": "q1", "question": "Which of these is a mammal?", "choices": {"text": ["shark", "whale", "trout"], "label": ["A", "B", "C"]}, "answerKey": "B"},
        {"id": "q2", "question": "What do plants need to make food?", "choices": {"text": ["sunlight", "sand", "salt", "smoke"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"},
    ],
    "piqa": [{"goal": "To dry wet shoes,", "sol1": "stuff them with newspaper.", "sol2": "stuff them with ice.", "label": 0},
             {"goal": "To cut a tomato,", "sol1": "use a spoon.", "sol2": "use a sharp knife.", "label": 1}],
    "boolq": [{"passage": "The cat is a small mammal.", "question": "is a cat a mammal", "label": 1, "idx": 0},
              {"passage": "Trout are fish.", "question": "are trout birds", "label": 0, "idx": 1}],
    "mmlu": [{"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
             {"question": "Which gas do plants absorb?", "subject": "biology", "choices": ["O2", "N2", "CO2", "He"], "answer": 2}],
    "gsm8k": [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
              {"question": "A box holds 6 eggs. How many eggs are in 2 boxes?", "answer": "2 boxes hold 2 * 6 = <<2*6=12>>12 eggs.\n#### 12"},
              {"question": "Sara had 10 pens and gave away 4. How many are left?", "answer": "She has 10 - 4 = <<10-4=6>>6 pens left.\n#### 6"}],
    "truthfulqa": [{"question": "What happens if you swallow gum?",
                    "mc1_targets": {"choices": ["It passes through you.", "It stays for seven years.", "You die."], "labels": [1, 0, 0]},
                    "mc2_targets": {"choices": ["It passes through you.", "Nothing much.", "It stays for seven years.", "You die."], "labels": [1, 1, 0, 0]}}],
    "wikitext": [{"page": " = Cat = \n The cat is a small mammal . It sat on the mat . \n"}, {"page": " = Porto = \n Porto is a city . \n"}],
}


@pytest.fixture
def fixture_file(tmp_path):
    def make(name):
        return str(write_jsonl(tmp_path / f"{name}.jsonl", FIXTURES[name]))
    return make
