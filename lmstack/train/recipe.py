"""The recipe contract and the registry of recipes.

A recipe is a module with a config dataclass and `run(cfg) -> Result`: a short explicit loop over
the shared blocks of `lmstack.train`. The registry below maps command names to them; the command line
(`lmstack <name> --help`) and the course pipeline (`lmstack run`) are both generated from it, so a new
recipe is one module plus one line here.

`Result.artifacts` names what the run produced (`model`, `sampled_rankings`, ...), so callers never
guess a recipe's folder layout.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from lmstack.errors import LmstackError


@dataclass
class Result:
    summary: dict  # headline numbers, also written to the run folder's summary.json
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path of what the run wrote


@dataclass(frozen=True)
class Recipe:
    name: str
    module: str  # imported on first use, so `lmstack --help` does not import torch
    config: str  # the config dataclass's name in `module`
    help: str

    def load(self):
        """(config class, run function)."""
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), mod.run


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("pretrain", "lmstack.train.pretrain", "PretrainConfig",
           "next-token-prediction pretraining on prepared token data"),
    Recipe("scaling", "lmstack.train.scaling", "ScalingConfig",
           "a model-size sweep and a compute-budget sweep with fitted power laws"),
    Recipe("sft", "lmstack.train.sft", "SFTConfig",
           "supervised fine-tuning on instruction records (packing, assistant-only loss, LoRA)"),
    Recipe("flan", "lmstack.train.flan", "FlanConfig",
           "FLAN's protocol: tune on all task clusters but one, evaluate zero-shot on the held-out one"),
    Recipe("reward", "lmstack.train.reward", "RewardConfig",
           "a reward model on ranked answers (InstructGPT's step 2, Llama 2's safety RM)"),
    Recipe("ppo", "lmstack.train.ppo", "PPOConfig",
           "PPO against reward models with a KL penalty to the SFT policy (InstructGPT's step 3)"),
    Recipe("dpo", "lmstack.train.dpo", "DPOConfig",
           "direct preference optimisation on chosen/rejected pairs"),
    Recipe("grpo", "lmstack.train.grpo", "GRPOConfig",
           "group-relative policy optimisation (no value model; rewards normalised per prompt group)"),
    Recipe("rejection-sampling", "lmstack.train.rejection", "RejectionConfig",
           "rejection sampling: best-of-K answers by reward, then SFT on them (Llama 2-Chat)"),
]}


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise LmstackError(f"no recipe named {name!r} (known: {', '.join(RECIPES)})")
    return RECIPES[name]
