"""Command lines of the preference-learning recipes: reward, ppo, dpo, grpo, rejection-sampling.

Flags come from each recipe's config dataclass (lmstack.cli.train.add_dataclass_args), so they cannot
drift from the defaults documented there. `add_parsers(subparsers)` registers them.
"""

from __future__ import annotations

from lmstack.cli.train import add_dataclass_args, dataclass_from_args

COMMON_HELP = {
    "model": "checkpoint to start from (the SFT policy; folder, .gguf or hub name)",
    "data": "JSONL files (default: the built-in suite, built into <out>/suite)",
    "suite": "an existing built-in suite folder to use instead of building <out>/suite",
    "lora": "train LoRA adapters (peft); the reference is the model with adapters off",
    "lora_targets": "module names to adapt (qkv, o_proj, up, down)",
    "overlong": "drop (counted) or error: prompt + answer longer than --seq-len",
    "skip_bad": "count and skip malformed records instead of stopping",
}
REWARD_HELP = {
    "reward_model": "reward model folder (lmstack reward)",
    "safety_reward_model": "safety reward model: Llama 2's rule picks it for unsafe prompts or low safety scores",
    "safety_threshold": "safety score below which the safety RM decides (normalised units)",
    "reward_rule": "a rule instead of reward models: exact_match, annotator, token:ID",
    "clusters": "only prompts of these suite clusters (e.g. arithmetic)",
}


def add_parsers(sub) -> None:
    from lmstack.train.dpo import DPOConfig
    from lmstack.train.grpo import GRPOConfig
    from lmstack.train.ppo import PPOConfig
    from lmstack.train.rejection import RejectionConfig
    from lmstack.train.reward import RewardConfig

    p = sub.add_parser("reward", help="train a reward model on ranked answers (InstructGPT step 2)")
    add_dataclass_args(p, RewardConfig, {**COMMON_HELP,
                                         "data": "rankings/pairs JSONL (default: the suite's rankings)",
                                         "val_data": "held-out comparisons (default: the suite's pairs_test)",
                                         "subset": "all, helpful or safety (Llama 2's two reward models)",
                                         "margin_scale": "Llama 2 margin = scale x rating gap (0: off)",
                                         "normalize": "gain/bias so that the SFT policy's answers score 0 +- 1"})
    p.set_defaults(func=_reward)

    p = sub.add_parser("ppo", help="PPO against reward model(s) with a KL penalty (InstructGPT step 3, PPO-ptx)")
    add_dataclass_args(p, PPOConfig, {**COMMON_HELP, **REWARD_HELP,
                                      "data": "prompt JSONL (default: the suite's train tasks and safety requests)",
                                      "kl_target": "adaptive KL controller target in nats per answer (0: fixed beta)",
                                      "ptx_coef": "PPO-ptx: weight of the pretraining loss (0: off)",
                                      "ptx_data": "pretraining text files (default: the suite's corpus)",
                                      "value_init": "auto, reward (from the RM) or policy"})
    p.set_defaults(func=_ppo)

    p = sub.add_parser("dpo", help="direct preference optimisation (sigmoid, ipo, conservative)")
    add_dataclass_args(p, DPOConfig, {**COMMON_HELP,
                                      "data": "pairs/rankings JSONL (default: the suite's pairs)",
                                      "loss": "sigmoid, ipo or conservative"})
    p.set_defaults(func=_dpo)

    p = sub.add_parser("grpo", help="group relative policy optimisation (reward model or a rule-based verifier)")
    add_dataclass_args(p, GRPOConfig, {**COMMON_HELP, **REWARD_HELP})
    p.set_defaults(func=_grpo)

    p = sub.add_parser("rejection-sampling", help="best-of-N sampling + fine-tuning rounds (Llama 2)")
    add_dataclass_args(p, RejectionConfig, {**COMMON_HELP, **REWARD_HELP,
                                            "samples": "N answers per prompt; the reward model keeps the best"})
    p.set_defaults(func=_rejection)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _reward(args) -> int:
    from lmstack.train.reward import RewardConfig, reward

    s = reward(dataclass_from_args(RewardConfig, args))
    print(f"done: {s['steps']} steps, held-out accuracy {_fmt(s['val_accuracy'])} on {s['val_pairs']} pairs, "
          f"mean margin {_fmt(s['val_margin'])}; reward model in {args.out}/model")
    return 0


def _ppo(args) -> int:
    from lmstack.train.ppo import PPOConfig, ppo

    s = ppo(dataclass_from_args(PPOConfig, args))
    print(f"done: {s['steps']} iterations, reward {s['reward_first']:.3f} -> {s['reward_last']:.3f}, "
          f"KL {s['kl_last']:.3f}; policy in {args.out}/model")
    return 0


def _dpo(args) -> int:
    from lmstack.train.dpo import DPOConfig, dpo

    s = dpo(dataclass_from_args(DPOConfig, args))
    print(f"done: {s['steps']} steps, loss {_fmt(s['final_loss'])}, held-out implicit-reward accuracy "
          f"{_fmt(s.get('val_reward_accuracy'))}; policy in {args.out}/model")
    return 0


def _grpo(args) -> int:
    from lmstack.train.grpo import GRPOConfig, grpo

    s = grpo(dataclass_from_args(GRPOConfig, args))
    print(f"done: {s['steps']} iterations, reward {s['reward_first']:.3f} -> {s['reward_last']:.3f}, "
          f"KL {s['kl_last']:.3f}; policy in {args.out}/model")
    return 0


def _rejection(args) -> int:
    from lmstack.train.rejection import RejectionConfig, rejection_sampling

    s = rejection_sampling(dataclass_from_args(RejectionConfig, args))
    for r in s["rounds"]:
        print(f"round {r['round']}: mean reward {r['reward_mean']:.3f}, best-of-N {r['reward_best_of_n']:.3f}")
    print(f"policy in {s['model']}")
    return 0
