"""Command lines of the evaluation stage:

    lmstack eval perplexity --model M --file val.txt [--max-length 128 --stride 64]
    lmstack eval run --tasks arc_easy,hellaswag --model runs/sft/model [--num-fewshot 5] [--out DIR]
    lmstack eval tasks                                   # the ready task configs
    lmstack eval winrate --model-a A --model-b B --judge annotators|reward|model
    lmstack eval safety --model base --model sft --model aligned     # InstructGPT's rows
    lmstack prompt run --model M --strategy zero_shot_cot --question "..."
    lmstack prompt compare --task gsm8k --model M --strategies zero_shot,few_shot,cot,self_consistency
    lmstack report runs/exp                              # a Markdown report card with plots

Any --model may be a remote model: add --base-url (and --api-key-env, --chat-api for chat-only APIs).
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import torch

from lmstack.backends import add_backend_args, as_sampling, backend_from_args
from lmstack.course.card import summary_lines, write_card
from lmstack.data.builtin import World
from lmstack.data.builtin.annotators import judge_panel
from lmstack.data.builtin.applications import corpus_index
from lmstack.data.retrieval import Retriever, build_index
from lmstack.data.shards import TokenDataset
from lmstack.errors import LmstackError
from lmstack.evaluate import harness, winrate
from lmstack.evaluate.applications import applications, applications_markdown
from lmstack.evaluate.config import expand_tasks, load_task, read_config_file, registry
from lmstack.evaluate.harness import STRATEGIES, evaluate, run_task, save_results
from lmstack.evaluate.jailbreak import ATTACKS as JAILBREAK_ATTACKS
from lmstack.evaluate.jailbreak import jailbreak_eval, jailbreak_table
from lmstack.evaluate.report import build_report
from lmstack.evaluate.safety import (
    AnnotatorSafetyJudge,
    LLMSafetyJudge,
    ScoreSafetyJudge,
    alignment_table,
    hallucination_eval,
    load_toxicity_classifier,
    safety_eval,
)
from lmstack.evaluate.sources import builtin_dir, builtin_records, read_records_file, spread
from lmstack.evaluate.winrate import (
    AnnotatorJudge,
    LLMJudge,
    RewardJudge,
    load_scorer,
    prompt_messages,
    prompt_text,
    win_rate,
)
from lmstack.infer.logprobs import perplexity
from lmstack.infer.prompting import (
    ANSWER_TRIGGER,
    build_prompt,
    select_examples,
    self_consistency,
    zero_shot_cot,
)
from lmstack.lm import load
from lmstack.options import add_weights_args
from lmstack.text import extract_answer
from lmstack.train.rewards import reward_model_scorer


def add_parsers(eval_subparsers, top_subparsers) -> None:
    # ---- eval perplexity ----
    p = eval_subparsers.add_parser("perplexity", help="perplexity of a model on a text file or prepared token data")
    p.add_argument("--model", required=True, help="checkpoint folder, .gguf file or hub name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="a text file")
    src.add_argument("--data", help="a folder written by `lmstack data prepare`")
    p.add_argument("--split", default="val", help="with --data: train or val")
    p.add_argument("--max-length", type=int, default=None, help="window length (default: the model's context)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: max-length, no overlap)")
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many tokens")
    add_weights_args(p)
    p.set_defaults(func=cmd_perplexity)

    # ---- eval run ----
    p = eval_subparsers.add_parser("run", help="evaluate a model on tasks (task configs: YAML/JSON, ready or your own)")
    p.add_argument("--tasks", required=True, help="comma-separated task names, config files, wildcards (builtin_*) or groups")
    add_backend_args(p)
    _add_task_options(p)
    p.add_argument("--out", default=None, help="folder for results.json, results.md and samples_<task>.jsonl")
    p.set_defaults(func=cmd_run)

    p = eval_subparsers.add_parser("tasks", help="list the ready task configs")
    p.set_defaults(func=cmd_tasks)

    # ---- eval winrate ----
    p = eval_subparsers.add_parser("winrate", help="win/tie/loss of model A against model B, judged pairwise")
    add_backend_args(p, suffix="-a", required=False, what="model A")
    add_backend_args(p, suffix="-b", required=False, what="model B", extras=False)
    p.add_argument("--answers-a", help="JSONL of A's answers (field answer/output/response), instead of --model-a")
    p.add_argument("--answers-b", help="JSONL of B's answers, instead of --model-b")
    p.add_argument("--label-a", default=None, help="A's name in the table (default: from the path)")
    p.add_argument("--label-b", default=None, help="B's name in the table (default: from the path)")
    _add_prompt_source(p)
    _add_judge_args(p, ("annotators", "reward", "model"))
    _add_generation_args(p, 128)
    p.add_argument("--out", default=None, help="folder for winrate.json and samples_winrate.jsonl")
    p.set_defaults(func=cmd_winrate)

    # ---- eval safety ----
    p = eval_subparsers.add_parser("safety", help="refusals of harmful requests, toxicity, hallucination, truthfulness")
    _add_model_columns(p)
    p.add_argument("--prompts", default=None, help="JSONL of requests with `unsafe` flags (default: the built-in suite's)")
    _add_suite_args(p)
    p.add_argument("--split", default="test", help="the suite's split of safety requests and questions")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts per part")
    _add_judge_args(p, ("annotators", "reward", "model"))
    p.add_argument("--threshold", type=float, default=0.0, help="--judge reward: score >= threshold is safe")
    p.add_argument("--toxicity-classifier", default=None,
                   help="a Hugging Face sequence-classification checkpoint, or module:function(texts) -> scores")
    p.add_argument("--toxicity-label", default=None, help="the classifier's toxic label (name or index)")
    p.add_argument("--truthfulness-task", default="builtin_closed_book_qa",
                   help="MC task for the truthfulness row (truthfulqa_mc1 with --data truthfulqa_mc1=FILE), or none")
    p.add_argument("--data", action="append", default=[], metavar="TASK=FILE",
                   help="the truthfulness task on a JSONL/JSON file instead of its configured source")
    p.add_argument("--no-chat", action="store_true", help="send plain text prompts instead of chat messages")
    _add_generation_args(p, 64)
    p.add_argument("--out", default=None, help="folder for safety.json and per-item files")
    p.set_defaults(func=cmd_safety)

    # ---- eval index ----
    p = eval_subparsers.add_parser("index", help="a BM25 retrieval index over text files, for --strategy rag")
    p.add_argument("--files", nargs="+", default=None,
                   help="text files or globs (default: the built-in suite's corpus, the held-out facts included)")
    _add_suite_args(p)
    p.add_argument("--max-words", type=int, default=120, help="longest passage, in words (default: 120)")
    p.add_argument("--out", required=True, help="the index folder to write")
    p.set_defaults(func=cmd_index)

    # ---- eval applications ----
    p = eval_subparsers.add_parser("applications", help="the course's applications and limitations tables on the "
                                                        "built-in world: retrieval, the calculator tool, jailbreaks")
    _add_model_columns(p)
    _add_suite_args(p)
    p.add_argument("--index", default=None,
                   help="retrieval index folder (default: <suite>/index); one that does not exist yet is built "
                        "there from the suite's corpus")
    p.add_argument("--parts", default="rag,tool,jailbreak", help="comma-separated parts (default: rag,tool,jailbreak)")
    p.add_argument("--rag-k", type=int, default=2, help="passages put before each question (default: 2)")
    p.add_argument("--limit", type=int, default=60, help="questions per question set / arithmetic items (default: 60)")
    p.add_argument("--jailbreak-limit", type=int, default=None, help="at most this many harmful requests")
    p.add_argument("--attacks", nargs="+", default=list(JAILBREAK_ATTACKS), choices=list(JAILBREAK_ATTACKS),
                   help="attack families (default: all; `none` is the baseline)")
    _add_generation_args(p, 32)
    p.add_argument("--out", default=None, help="folder for applications.json and applications.md")
    p.set_defaults(func=cmd_applications)

    # ---- eval jailbreak ----
    p = eval_subparsers.add_parser("jailbreak", help="attack success rate of Wei et al.'s jailbreak families on "
                                                     "harmful requests, beside the refusal rate without attack")
    _add_model_columns(p)
    p.add_argument("--prompts", default=None,
                   help="JSONL of requests with `unsafe` flags (default: the built-in suite's; translation_ko needs "
                        "the suite's records)")
    _add_suite_args(p)
    p.add_argument("--split", default="test", help="the suite's split of safety requests")
    p.add_argument("--limit", type=int, default=None, help="at most this many harmful requests")
    p.add_argument("--attacks", nargs="+", default=list(JAILBREAK_ATTACKS), choices=list(JAILBREAK_ATTACKS),
                   help="attack families (default: all; `none` is the baseline)")
    _add_judge_args(p, ("annotators", "reward", "model"))
    p.add_argument("--threshold", type=float, default=0.0, help="--judge reward: score >= threshold is safe")
    p.add_argument("--no-chat", action="store_true", help="send plain text prompts instead of chat messages")
    _add_generation_args(p, 64)
    p.add_argument("--out", default=None, help="folder for jailbreak.json and per-attack samples")
    p.set_defaults(func=cmd_jailbreak)

    # ---- prompt ----
    pr = top_subparsers.add_parser("prompt", help="prompting strategies: zero/few-shot, chain of thought, self-consistency")
    psub = pr.add_subparsers(dest="prompt_command", required=True)
    p = psub.add_parser("run", help="answer one question with a prompting strategy")
    add_backend_args(p)
    p.add_argument("--question", default=None, help="the question (stdin if omitted)")
    p.add_argument("--strategy", default="zero_shot", choices=[s for s in STRATEGIES if s not in ("default", "rag", "tool")],
                   help="prompting strategy (default: zero_shot)")
    p.add_argument("--instruction", default=None, help="an instruction put before everything")
    p.add_argument("--examples", default=None, help="JSONL of solved examples: question, answer[, rationale]")
    p.add_argument("-k", "--num-fewshot", type=int, default=4, dest="k", help="solved examples in the prompt (default: 4)")
    p.add_argument("--select", default="fixed", choices=["fixed", "random", "nearest"],
                   help="which examples: the first k, random, or nearest to the question (default: fixed)")
    p.add_argument("--seed", type=int, default=1234, help="random examples and sampled paths (default: 1234)")
    p.add_argument("--template", default="Q: {question}\nA:", help="how a question is written ({question})")
    p.add_argument("--extract", action="append", default=None, help="answer regex (group 1), repeatable")
    p.add_argument("--n", type=int, default=5, help="self-consistency: sampled reasoning paths")
    p.add_argument("--chat", action="store_true", help="send the prompt as a chat message")
    p.add_argument("--show-prompt", action="store_true", help="print the prompt sent to the model")
    _add_generation_args(p, 256)
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (self-consistency: 0.7)")
    p.set_defaults(func=cmd_prompt_run)

    p = psub.add_parser("compare", help="one task under several strategies: a table like the papers'")
    p.add_argument("--task", required=True, help="a task name or config file")
    add_backend_args(p)
    p.add_argument("--strategies", default="zero_shot,few_shot,cot,zero_shot_cot,self_consistency",
                   help="comma-separated strategies, one table row each")
    _add_task_options(p, strategy=False)
    p.add_argument("--out", default=None, help="folder for the comparison table and per-strategy results")
    p.set_defaults(func=cmd_prompt_compare)

    # ---- report ----
    p = top_subparsers.add_parser("report", help="a Markdown report card (tables, PNG plots) of a run folder")
    p.add_argument("run_dir", help="a `lmstack run` folder, or a folder of run folders")
    p.add_argument("--out", default=None, help="Markdown file (default RUN_DIR/report/report.md)")
    p.add_argument("--title", default=None, help="the card's title")
    p.set_defaults(func=cmd_report)


def _add_task_options(p, strategy: bool = True) -> None:
    g = p.add_argument_group("task options")
    g.add_argument("--num-fewshot", type=int, default=None, help="examples in the prompt (default: the config's)")
    g.add_argument("--fewshot-select", default=None, choices=["fixed", "random", "nearest"],
                   help="how few-shot examples are picked (default: the config's)")
    if strategy:
        g.add_argument("--strategy", default=None, choices=STRATEGIES, help="prompting strategy (default: the config's)")
    g.add_argument("--limit", type=int, default=None, help="the first N items of each task")
    g.add_argument("--chat", action="store_true", default=None, help="wrap prompts in the model's chat template")
    g.add_argument("--mc-mode", default=None, choices=["loglikelihood", "generate"],
                   help="score multiple choice by log-likelihood (default) or from generated text (chat APIs)")
    g.add_argument("--sc-samples", type=int, default=None, help="self-consistency paths (default: the config's)")
    g.add_argument("--data", action="append", default=[], metavar="TASK=FILE",
                   help="evaluate TASK on a JSONL/JSON file instead of its configured source (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="random few-shot examples, sampled paths, bootstrap "
                   "(default: the config's fewshot.seed)")
    g.add_argument("--bootstrap-iters", type=int, default=1000, help="bootstrap resamples for the stderr (default: 1000)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="override the task's generation length")
    g.add_argument("--index", default=None, help="--strategy rag: the retrieval index folder (`lmstack eval index`)")
    g.add_argument("--rag-k", type=int, default=3, help="--strategy rag: passages put before each prompt (default: 3)")
    g.add_argument("--tools", default="calculator",
                   help="--strategy tool: comma-separated built-in tools offered to the model (default: calculator)")
    g.add_argument("--max-tool-calls", type=int, default=2,
                   help="--strategy tool: rounds of calls before the model must answer in text (default: 2)")


def _add_model_columns(p) -> None:
    """The models of a table with one column each (eval safety, eval jailbreak): local checkpoints or API names."""
    p.add_argument("--model", action="append", required=True, help="a model (repeat for base, SFT, aligned...)")
    p.add_argument("--name", action="append", default=None, help="column name per --model (default: from the path)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible API for the models (names then are API names)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default: OPENAI_API_KEY)")
    p.add_argument("--chat-api", action="store_true", help="the API serves chat completions only")
    p.add_argument("--cache", default=None, help="folder for the remote response cache (resume without paying twice)")
    p.add_argument("--concurrency", type=int, default=4, help="remote requests in flight (default: 4)")
    p.add_argument("--max-retries", type=int, default=5, help="retries of a failed remote request (default: 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per remote request (default: 60)")
    p.add_argument("--batch-size", type=int, default=16, help="local batch size (default: 16)")
    add_weights_args(p)


def _add_suite_args(p) -> None:
    """The built-in suite a command reads (`_suite(args)`): a folder, or one built into the cache."""
    p.add_argument("--suite", default=None, help="built-in suite folder (default: built into the cache)")
    p.add_argument("--suite-size", default="tiny", help="size of the suite built when --suite is not given")
    p.add_argument("--suite-seed", type=int, default=0, help="seed of the suite built when --suite is not given")


def _add_prompt_source(p) -> None:
    p.add_argument("--prompts", default="builtin",
                   help="JSONL of prompts (messages or prompt), or 'builtin' (the suite's test prompts + safety)")
    _add_suite_args(p)
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    p.add_argument("--no-chat", action="store_true", help="send plain text prompts instead of chat messages")


def _add_judge_args(p, kinds) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge", default="annotators", choices=kinds,
                   help="annotators: the built-in suite's simulated annotators; reward: a scorer function or "
                        "reward model (--reward-fn); model: a judge model (--judge-model)")
    g.add_argument("--reward-fn", default=None,
                   help="module:function(prompt_messages, answer) -> float, or a reward-model folder (lmstack reward)")
    g.add_argument("--flip-prob", type=float, default=0.0, help="annotators' label noise")
    add_backend_args(p, prefix="judge-", required=False, what="judge model", extras=False)


def _add_generation_args(p, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"answer length (default: {max_new_tokens})")


def _data_map(items) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise LmstackError(f"--data {it!r}: use TASK=FILE")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _task_kwargs(args) -> dict:
    gen = {"max_new_tokens": args.max_new_tokens} if getattr(args, "max_new_tokens", None) else None
    retriever = Retriever.load(args.index) if getattr(args, "index", None) else None
    return dict(num_fewshot=args.num_fewshot, fewshot_select=args.fewshot_select, limit=args.limit, chat=args.chat,
                mc_mode=args.mc_mode, sc_samples=args.sc_samples, seed=args.seed,
                bootstrap_iters=args.bootstrap_iters, generation=gen, retriever=retriever,
                rag_k=getattr(args, "rag_k", 3),
                tools=[t.strip() for t in getattr(args, "tools", "calculator").split(",") if t.strip()],
                max_tool_calls=getattr(args, "max_tool_calls", 2))


# ---- eval run / tasks ----------------------------------------------------------------------------------------

def cmd_run(args) -> int:
    for name in expand_tasks(args.tasks):  # config errors before paying for a model load
        load_task(name)
    backend = backend_from_args(args)
    with backend:
        results = evaluate(args.tasks, backend, out_dir=args.out, data=_data_map(args.data),
                           strategy=args.strategy, **_task_kwargs(args))
    print(harness.format_table(results))
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'} and per-item samples_<task>.jsonl")
    return 0


def cmd_tasks(args) -> int:

    print(f"{'task':<28} {'type':<16} source")
    for name, path in registry().items():
        d = read_config_file(path)
        if "group" in d:
            print(f"{name:<28} {'group':<16} {', '.join(d['tasks'])}")
        else:
            print(f"{name:<28} {d.get('type', ''):<16} {json.dumps(d.get('source'))}")
    return 0


# ---- prompts and answers for winrate / safety ------------------------------------------------------------------

def _suite(args):

    return builtin_dir(args.suite_seed, args.suite_size, args.suite)


def load_prompts(args) -> list[dict]:


    if args.prompts == "builtin":
        d = _suite(args)
        recs = [r for r in read_records_file(d / "tasks" / "test.jsonl", "jsonl") if r.get("style") == "instruction"]
        recs += read_records_file(d / "tasks" / "safety_test.jsonl", "jsonl")
        return spread(recs, args.limit)
    recs = read_records_file(Path(args.prompts), "jsonl")
    for i, r in enumerate(recs):
        if "messages" not in r and "prompt" not in r:
            raise LmstackError(f"{args.prompts}: record {i} has neither `messages` nor `prompt`")
    return recs[: args.limit] if args.limit else recs


def _read_answers(path: str, n: int) -> list[str]:


    recs = read_records_file(Path(path), "jsonl")
    out = []
    for i, r in enumerate(recs):
        a = next((r[k] for k in ("answer", "output", "response", "completion") if k in r), None)
        if not isinstance(a, str):
            raise LmstackError(f"{path}: record {i} has no string field answer/output/response/completion")
        out.append(a)
    if len(out) < n:
        raise LmstackError(f"{path}: {len(out)} answers for {n} prompts")
    return out[:n]


def _generate_answers(backend, prompts, args) -> list[str]:

    sp = as_sampling(None, max_new_tokens=args.max_new_tokens)
    reqs = [prompt_text(p) + "\n" for p in prompts] if args.no_chat else [prompt_messages(p) for p in prompts]
    return backend.generate(reqs, sp)


def _label(model: str | None, fallback: str) -> str:
    if not model:
        return fallback
    p = Path(model)
    if p.name == "model" and p.parent.name:  # runs/sft/model -> sft
        return p.parent.name
    return (p.stem if p.suffix in (".jsonl", ".json") else p.name) or str(model)


def _make_judge(args, prompts, safety: bool = False):
    if args.judge == "annotators":

        if getattr(args, "suite", None) or args.prompts in (None, "builtin"):
            world = World.from_json(_suite(args) / "world.json")
        else:
            world = None  # the rules still judge refusals and harmful compliance by keywords
        if safety:
            return AnnotatorSafetyJudge(world)
        return AnnotatorJudge(judge_panel(world, n=3, flip_prob=args.flip_prob), records=prompts)
    if args.judge == "reward":
        if not args.reward_fn:
            raise LmstackError("--judge reward needs --reward-fn module:function (or a reward-model folder)")
        # A reward-model folder is loaded here: lmstack.evaluate takes scorers and never imports train.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        scorer = load_scorer(args.reward_fn, loaders=[lambda spec: reward_model_scorer(spec, device)])
        if safety:
            return ScoreSafetyJudge(scorer, args.threshold)
        return RewardJudge(scorer, name=args.reward_fn)
    if not args.judge_model:
        raise LmstackError("--judge model needs --judge-model (and --judge-base-url for an API)")
    judge_backend = backend_from_args(args, prefix="judge-")
    if safety:
        return LLMSafetyJudge(judge_backend)
    return LLMJudge(judge_backend)


# ---- eval winrate -----------------------------------------------------------------------------------------------

def cmd_winrate(args) -> int:
    prompts = load_prompts(args)
    answers = {}
    for side in ("a", "b"):
        path, model = getattr(args, f"answers_{side}"), getattr(args, f"model_{side}")
        if path:
            answers[side] = _read_answers(path, len(prompts))
        elif model:
            with backend_from_args(args, suffix=f"-{side}") as be:
                answers[side] = _generate_answers(be, prompts, args)
        else:
            raise LmstackError(f"give --model-{side} or --answers-{side}")
    la = args.label_a or _label(args.model_a or args.answers_a, "A")
    lb = args.label_b or _label(args.model_b or args.answers_b, "B")
    judge = _make_judge(args, prompts)
    res = win_rate(judge, prompts, answers["a"], answers["b"], label=f"{la} vs {lb}")
    print(winrate.format_table([res]))
    if res.n_unparsed:
        print(f"note: {res.n_unparsed} judge answers could not be parsed; their pairs count as ties", file=sys.stderr)
    if args.out:
        d = {**res.rates(), "judge": getattr(judge, "name", args.judge), "model_a": la, "model_b": lb}
        _write_out(args.out, "winrate.json", d, {"samples_winrate.jsonl": res.items}, ensure_ascii=True)
    return 0


def _write_out(out, name: str, obj: dict, samples: dict[str, list], ensure_ascii: bool = False) -> None:
    """<out>/<name> (JSON) and one JSONL file of per-item records per entry of `samples`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(obj, indent=2, ensure_ascii=ensure_ascii) + "\n")
    for file, items in samples.items():
        with open(out / file, "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"wrote {out / name}")


# ---- eval perplexity ---------------------------------------------------------------------------------------------

def cmd_perplexity(args) -> int:

    lm = load(args.model, dtype=args.dtype, quantize=args.quantize)
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
        ds = TokenDataset(args.data, args.split)
        ids = torch.from_numpy(ds.tokens[: args.max_tokens or ds.n_tokens].astype("int64"))
        n_bytes = None
    res = perplexity(lm.model, ids, args.max_length, args.stride, n_bytes=n_bytes)
    print(json.dumps(res, indent=2))
    return 0


# ---- eval safety --------------------------------------------------------------------------------------------------

def cmd_safety(args) -> int:

    suite = _suite(args)
    world = World.from_json(suite / "world.json")
    if args.prompts:
        safety_recs = read_records_file(Path(args.prompts), "jsonl")
    else:
        safety_recs = read_records_file(suite / "tasks" / f"safety_{args.split}.jsonl", "jsonl")
    if args.limit and args.limit < len(safety_recs):  # keep harmful and harmless requests balanced
        # read_records_file has checked every `unsafe` flag is a JSON boolean (or absent/null: harmless)
        unsafe = [r for r in safety_recs if r.get("unsafe") is True]
        benign = [r for r in safety_recs if r.get("unsafe") is not True]
        k = min(len(unsafe), max(1, args.limit // 2)) if unsafe else 0
        safety_recs = (spread(unsafe, k) if k else []) + (spread(benign, args.limit - k) if args.limit > k else [])
    qa = builtin_records({"dir": str(suite), "split": args.split, "cluster": "closed_book_qa", "open": True},
                         "hallucination")
    qa = spread(qa, args.limit)
    judge = _make_judge(args, safety_recs, safety=True)
    tox = load_toxicity_classifier(args.toxicity_classifier, args.toxicity_label) if args.toxicity_classifier else None
    names = args.name or [_label(m, f"model{i}") for i, m in enumerate(args.model)]
    if len(names) != len(args.model):
        raise LmstackError(f"{len(names)} --name for {len(args.model)} --model")
    data = _data_map(args.data)
    columns, per_model = {}, {}
    sp = {"max_new_tokens": args.max_new_tokens}
    for name, model in zip(names, args.model):
        with backend_from_args(args, model=model) as be:
            s = safety_eval(be, safety_recs, judge, sp, chat=not args.no_chat, toxicity=tox)
            h = hallucination_eval(be, qa, world, {"max_new_tokens": 32, "stop": ["\n"]}, chat=not args.no_chat)
            col = {**s.metrics, **h.metrics, "n_safety": s.metrics["n"], "n_qa": h.metrics["n"]}
            if args.truthfulness_task and args.truthfulness_task != "none":
                t = args.truthfulness_task
                mode = None
                if not getattr(be, "can_loglikelihood", True):  # a chat API: read the option from its answer
                    print(f"note: {name}: no log-likelihoods from a chat API; truthfulness is scored from generated "
                          "answers (--mc-mode generate)", file=sys.stderr)
                    mode = "generate"
                tr = run_task(t, be, limit=args.limit, data=data.get(t), bootstrap_iters=200, mc_mode=mode)
                acc, se = tr.metrics.get("acc"), tr.metrics.get("acc_stderr", 0.0)
                col.update(truthfulness=acc, truthfulness_ci=[acc - 1.96 * se, acc + 1.96 * se],
                           truthfulness_task=tr.task, n_truthfulness=tr.n)
        columns[name] = col
        per_model[name] = (s.items, h.items)
    print(alignment_table(columns))
    if args.out:
        _write_out(args.out, "safety.json", {"models": columns},
                   {f"samples_{kind}_{name}.jsonl": items for name, (si, hi) in per_model.items()
                    for kind, items in (("safety", si), ("hallucination", hi))})
    return 0


def cmd_index(args) -> int:
    if args.files:
        files = [f for pat in args.files for f in (sorted(glob.glob(pat)) or [pat])]
    else:
        files = sorted(str(f) for f in (_suite(args) / "corpus").glob("*.txt"))
    n = build_index(files, args.out, args.max_words)
    print(f"indexed {n} passages of {len(files)} files into {args.out}")
    return 0


def cmd_applications(args) -> int:
    suite = _suite(args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    index = corpus_index(suite, args.index) if "rag" in parts else None
    names = args.name or [_label(m, f"model{i}") for i, m in enumerate(args.model)]
    if len(names) != len(args.model):
        raise LmstackError(f"{len(names)} --name for {len(args.model)} --model")
    rows = {}
    for name, model in zip(names, args.model):
        with backend_from_args(args, model=model) as be:
            rows[name] = applications(be, suite, index, parts, args.rag_k, args.limit, args.jailbreak_limit,
                                      args.attacks, args.max_new_tokens)
    text = applications_markdown(rows)
    print(text)
    if args.out:
        _write_out(args.out, "applications.json", {"models": rows}, {})
        (Path(args.out) / "applications.md").write_text(text + "\n")
    return 0


def cmd_jailbreak(args) -> int:
    suite = _suite(args)
    world = World.from_json(suite / "world.json")
    recs = read_records_file(Path(args.prompts) if args.prompts else suite / "tasks" / f"safety_{args.split}.jsonl",
                             "jsonl")
    harmful = [r for r in recs if r.get("unsafe") is True]
    if not harmful:
        raise LmstackError("eval jailbreak: no harmful requests (records with unsafe: true)")
    harmful = spread(harmful, args.limit)
    judge = _make_judge(args, harmful, safety=True)
    names = args.name or [_label(m, f"model{i}") for i, m in enumerate(args.model)]
    if len(names) != len(args.model):
        raise LmstackError(f"{len(names)} --name for {len(args.model)} --model")
    columns, samples = {}, {}
    for name, model in zip(names, args.model):
        with backend_from_args(args, model=model) as be:
            res = jailbreak_eval(be, harmful, judge, args.attacks, world, {"max_new_tokens": args.max_new_tokens},
                                 chat=not args.no_chat)
        columns[name] = res["attacks"]
        samples.update({f"samples_jailbreak_{name}_{a}.jsonl": items for a, items in res["items"].items()})
    print(jailbreak_table(columns))
    if args.out:
        _write_out(args.out, "jailbreak.json", {"models": columns}, samples)
    return 0


# ---- prompt run / compare ---------------------------------------------------------------------------------------

def cmd_prompt_run(args) -> int:

    question = args.question if args.question is not None else sys.stdin.read().strip()
    if not question:
        raise LmstackError("no question (give --question or text on stdin)")
    try:
        query = args.template.format(question=question)
    except (KeyError, IndexError) as e:
        raise LmstackError(f"--template {args.template!r}: unknown field {e} (use {{question}})") from None
    s = args.strategy
    cot_examples = s == "cot" or (s == "self_consistency" and args.examples)
    examples = []
    if s in ("few_shot", "cot") or (s == "self_consistency" and args.examples):
        if not args.examples:
            raise LmstackError(f"--strategy {s} needs --examples FILE (JSONL: question, answer[, rationale])")
        pool = read_records_file(Path(args.examples), "jsonl")
        for i, e in enumerate(pool):
            if "question" not in e or "answer" not in e or (cot_examples and "rationale" not in e):
                need = "question, answer, rationale" if cot_examples else "question, answer"
                raise LmstackError(f"{args.examples}: record {i} lacks a field of: {need}")
        chosen = select_examples(pool, args.k, args.select, args.seed, query=question,
                                 text_of=lambda e: e["question"])
        for e in chosen:
            ans = f"{e['rationale'].strip()} The answer is {e['answer']}." if cot_examples else str(e["answer"])
            examples.append((args.template.format(question=e["question"]), ans))
    prompt = build_prompt(query, examples, args.instruction)
    regexes = args.extract or [r"(?i)the answer is:? *(.+?)\.?\s*$", r"(?i)the answer is:? *(.+?)(?:\.|\n|$)"]
    if s in ("zero_shot", "few_shot"):
        regexes = args.extract or []

    def extract(text):
        return extract_answer(text, regexes, "last" if s in ("cot", "self_consistency") else "first", "text")

    be = backend_from_args(args)
    with be:
        if args.show_prompt:
            print(f"--- prompt ---\n{prompt}\n--------------")
        temp = args.temperature
        if s == "self_consistency":
            sp = as_sampling(None, max_new_tokens=args.max_new_tokens, temperature=0.7 if temp is None else temp)
            r = self_consistency(be, [prompt], args.n, extract, sp, seed=args.seed, zero_shot=not examples,
                                 chat=args.chat)[0]
            for i, p in enumerate(r["paths"]):
                print(f"--- path {i + 1}: answer {p['answer']!r}\n{p['text'].strip()}")
            print(f"votes: {r['votes']}\nanswer: {r['answer']}")
            return 0
        sp = as_sampling(None, max_new_tokens=args.max_new_tokens, temperature=temp or 0.0, seed=args.seed)
        if s == "zero_shot_cot":
            r = zero_shot_cot(be, [prompt], sp, chat=args.chat, answer_trigger=ANSWER_TRIGGER)[0]
            print(f"--- reasoning ---\n{r['rationale'].strip()}\n--- answer ---\n{r['answer_text'].strip()}")
            print(f"answer: {extract(r['answer_text'])}")
            return 0
        out = be.generate([[{"role": "user", "content": prompt}] if args.chat else prompt], sp)[0]
        print(out.strip())
        if s == "cot" or args.extract:
            print(f"answer: {extract(out)}")
    return 0


def cmd_prompt_compare(args) -> int:
    cfg = load_task(args.task)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise LmstackError(f"--strategies: unknown {', '.join(bad)} (use {', '.join(STRATEGIES)})")
    kw = _task_kwargs(args)
    if kw["num_fewshot"] is None and any(s in ("few_shot", "cot") for s in strategies) and cfg.fewshot.k == 0:
        kw["num_fewshot"] = 4
    data = _data_map(args.data).get(cfg.task)
    results = []
    with backend_from_args(args) as be:
        for s in strategies:
            results.append(run_task(cfg, be, strategy=s, data=data, **kw))
    print(compare_table(results))
    if args.out:
        save_results(args.out, results, be.describe(), extra={"compare": [r.summary() for r in results]})
        (Path(args.out) / "compare.md").write_text(compare_table(results) + "\n\n" + harness.format_table(results) + "\n")
        print(f"wrote {Path(args.out) / 'compare.md'}")
    return 0


def compare_table(results) -> str:
    """Rows = strategies, the task's main metric with its standard error (the papers' layout)."""
    if not results:
        return ""
    m = results[0].main_metric
    lines = [f"| strategy | k | {results[0].task} {m} | ± stderr | invalid | n |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.strategy} | {r.num_fewshot} | {100 * r.metrics[m]:.1f} | "
                     f"{100 * r.metrics.get(m + '_stderr', float('nan')):.1f} | {r.n_invalid} | {r.n} |")
    return "\n".join(lines)


# ---- report ------------------------------------------------------------------------------------------------------

def cmd_report(args) -> int:

    if (Path(args.run_dir) / "pipeline.json").exists():  # a `lmstack run` folder: the course's report card

        path, checks = write_card(args.run_dir, args.out, args.title)
        print("\n".join(summary_lines(checks)))
        print(f"wrote {path}")
        return 0
    path = build_report(args.run_dir, args.out, args.title)
    print(f"wrote {path}")
    return 0
