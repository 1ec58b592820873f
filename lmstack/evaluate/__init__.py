"""Evaluation: perplexity, the task harness (tasks are YAML/JSON configs), prompting-strategy
comparisons, win rates, safety/truthfulness/hallucination, and the report card.

    from lmstack.backends import get_backend
    from lmstack.evaluate import load_task, run_task
    res = run_task(load_task("arc_easy"), get_backend("runs/sft/model"), num_fewshot=5)
"""

_LAZY = {
    "load_task": "config", "task_from_dict": "config", "expand_tasks": "config", "registry": "config",
    "TaskConfig": "config", "run_task": "harness", "evaluate": "harness", "save_results": "harness",
    "TaskResult": "harness", "win_rate": "winrate", "AnnotatorJudge": "winrate", "RewardJudge": "winrate",
    "LLMJudge": "winrate", "safety_eval": "safety", "hallucination_eval": "safety", "build_report": "report",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    # Lazy, so `lmstack eval perplexity` does not import the harness and the harness not matplotlib.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
