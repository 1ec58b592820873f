"""LoRA adapters in peft's format on Hugging Face module names, so that transformers + peft and vLLM load lmstack's
adapters as they are, and lmstack loads theirs.

lmstack's Transformer fuses q/k/v into one `qkv` projection and gate/up into one `up` (one matmul each); peft's
adapters on it live on those fused modules. The two forms convert exactly:
- out: an adapter (A, B) on a fused module is one adapter per part with the same A and that part's rows of B
  (delta W_q = B_q A, ...): `q_proj`/`k_proj`/`v_proj` and `gate_proj`/`up_proj` (GPT-2's `c_attn` is fused in
  transformers too, so it maps one to one);
- in: per-part adapters (A_q, B_q), (A_k, B_k), ... are one adapter of rank k*r on the fused module, A stacked and B
  block-diagonal, alpha scaled by k so alpha / rank is unchanged (peft's rank_pattern / alpha_pattern); parts the
  adapter leaves out are zero blocks. Where every part has the same A (adapters written by lmstack) the rank stays r.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmstack.errors import LmstackError
from lmstack.model.config import ModelConfig

# lmstack module -> its parts under transformers' names, in the fused module's row order.
LLAMA_PARTS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o_proj": ("self_attn", ("o_proj",)),
               "up": ("mlp", ("gate_proj", "up_proj")), "down": ("mlp", ("down_proj",))}
GPT2_PARTS = {"qkv": ("attn", ("c_attn",)), "o_proj": ("attn", ("c_proj",)), "up": ("mlp", ("c_fc",)),
              "down": ("mlp", ("c_proj",))}
_OURS = re.compile(r"(?:base_model\.model\.)?blocks\.(\d+)\.(?:attn|mlp)\.(qkv|o_proj|up|down)\.lora_([AB])\.weight$")


def _parts(cfg: ModelConfig):
    return GPT2_PARTS if cfg.is_gpt2 else LLAMA_PARTS


def _layer(cfg: ModelConfig, i: int) -> str:
    return f"transformer.h.{i}" if cfg.is_gpt2 else f"model.layers.{i}"


def _rows(cfg: ModelConfig, module: str) -> list[int]:
    """The row counts of a fused module's parts."""
    if cfg.is_gpt2 or module in ("o_proj", "down"):
        return [-1]
    if module == "qkv":
        return [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
    return [cfg.d_ff, cfg.d_ff]


def save_adapter(peft_model, cfg: ModelConfig, folder: Path, base: str | None) -> None:
    """Write the (single, default) LoRA adapter of a peft-wrapped lmstack Transformer in peft's format on
    transformers' module names: adapter_config.json and adapter_model.safetensors."""
    from peft import get_peft_model_state_dict

    lc = peft_model.peft_config["default"]
    if getattr(lc, "use_dora", False) or getattr(lc, "use_rslora", False):
        raise LmstackError("LoRA export: DoRA and rsLoRA adapters are not converted")
    parts = _parts(cfg)
    out, targets = {}, []
    for key, w in get_peft_model_state_dict(peft_model).items():
        m = _OURS.search(key)
        if m is None:
            raise LmstackError(f"LoRA export: unexpected adapter tensor {key}")
        i, module, ab = int(m.group(1)), m.group(2), m.group(3)
        block, names = parts[module]
        rows = _rows(cfg, module)
        pieces = [w] * len(names) if ab == "A" else (w.split(rows) if rows != [-1] else [w])
        for name, piece in zip(names, pieces):
            out[f"base_model.model.{_layer(cfg, i)}.{block}.{name}.lora_{ab}.weight"] = piece.contiguous().clone()
            targets.append(name)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lc.r, "lora_alpha": lc.lora_alpha,
              "lora_dropout": lc.lora_dropout, "bias": "none", "target_modules": sorted(set(targets)),
              "fan_in_fan_out": bool(cfg.is_gpt2), "base_model_name_or_path": base, "inference_mode": True,
              "use_rslora": False, "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
              "rank_pattern": {}, "alpha_pattern": {}}
    folder = Path(folder)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(out, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def _hf_key(cfg: ModelConfig):
    parts = _parts(cfg)
    names = "|".join(sorted({n for _, ns in parts.values() for n in ns}))
    layer = r"transformer\.h" if cfg.is_gpt2 else r"model\.layers"
    return re.compile(rf"(?:base_model\.model\.)?{layer}\.(\d+)\.(attn|self_attn|mlp)\.({names})"
                      rf"\.lora_([AB])(?:\.default)?\.weight$")


def is_hf_adapter(folder: Path) -> bool:
    """Is the adapter written on transformers' module names (by lmstack now, or by peft on a transformers model)?"""
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return not any(t in ("qkv", "up", "down") for t in targets)


def fused_state(cfg: ModelConfig, folder: Path) -> tuple[dict, dict]:
    """An adapter folder on transformers' module names as (peft state dict on lmstack's fused modules, the
    LoraConfig arguments that state needs: r, lora_alpha, target_modules, rank_pattern, alpha_pattern)."""
    folder = Path(folder)
    conf = json.loads((folder / "adapter_config.json").read_text())
    for flag in ("use_dora", "use_rslora"):
        if conf.get(flag):
            raise LmstackError(f"{folder}: {flag} adapters are not supported")
    if conf.get("rank_pattern") or conf.get("alpha_pattern") or conf.get("modules_to_save"):
        raise LmstackError(f"{folder}: adapters with rank_pattern, alpha_pattern or modules_to_save are not supported")
    r, alpha = int(conf["r"]), float(conf["lora_alpha"])
    key = _hf_key(cfg)
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}  # (layer, "block.name") -> {"A": .., "B": ..}
    for k, w in load_file(str(folder / "adapter_model.safetensors")).items():
        m = key.search(k)
        if m is None:
            raise LmstackError(f"{folder}: adapter tensor {k} is not on a module lmstack can adapt")
        found.setdefault((int(m.group(1)), f"{m.group(2)}.{m.group(3)}"), {})[m.group(4)] = w.float()
    fused: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    rank: dict[str, int] = {}
    for i in range(cfg.n_layer):
        for module, (block, names) in _parts(cfg).items():
            have = [found.get((i, f"{block}.{n}")) for n in names]
            if not any(have):
                continue
            if len(names) == 1 or (all(have) and all(torch.equal(h["A"], have[0]["A"]) for h in have)):
                A, B = have[0]["A"], torch.cat([h["B"] for h in have])  # one A: rank r, B's rows stacked
            else:  # A's stacked, B block-diagonal: rank k*r (absent parts are zero blocks)
                k, d_in = len(names), next(h["A"] for h in have if h).shape[1]
                A, B = torch.zeros(k * r, d_in), torch.zeros(sum(_rows(cfg, module)), k * r)
                start = 0
                for j, (h, n) in enumerate(zip(have, _rows(cfg, module))):
                    if h is not None:
                        A[j * r:(j + 1) * r], B[start:start + n, j * r:(j + 1) * r] = h["A"], h["B"]
                    start += n
                rank[module] = k * r
            fused[i, module] = (A, B)
    if not fused:
        raise LmstackError(f"{folder}: the adapter holds no LoRA weights for this model")
    state = {}
    for (i, module), (A, B) in fused.items():
        if module in rank and A.shape[0] < rank[module]:  # a layer in the one-A form of a module stacked elsewhere
            A = torch.cat([A, A.new_zeros(rank[module] - A.shape[0], A.shape[1])])
            B = torch.cat([B, B.new_zeros(B.shape[0], rank[module] - B.shape[1])], dim=1)
        tag = "attn" if module in ("qkv", "o_proj") else "mlp"
        state[f"base_model.model.blocks.{i}.{tag}.{module}.lora_A.weight"] = A
        state[f"base_model.model.blocks.{i}.{tag}.{module}.lora_B.weight"] = B
    # Rank k*r with alpha k*alpha: the update's scale alpha / r is unchanged.
    args = {"r": r, "lora_alpha": alpha, "target_modules": sorted({m for _, m in fused}), "rank_pattern": rank,
            "alpha_pattern": {m: alpha * v / r for m, v in rank.items()}}
    return state, args


def load_hf_adapter(base_model, cfg: ModelConfig, folder: Path):
    """A peft adapter on transformers' module names, put on an lmstack Transformer (peft on its fused modules)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    state, args = fused_state(cfg, folder)
    model = get_peft_model(base_model, LoraConfig(lora_dropout=0.0, **args))
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise LmstackError(f"{folder}: adapter tensors peft did not place: {result.unexpected_keys[:3]}")
    return model.eval()


# ---- several adapters in one batch (serving) -----------------------------------------------------------------

class AdapterSet:
    """The adapters served beside their base in one batch (vLLM's multi-LoRA; punica's batched gather-matmul): row
    b of the next forward uses adapter index[b], 0 meaning none. The engine selects the rows before each forward."""

    def __init__(self, names: list[str]):
        self.names = names  # adapter i + 1's name
        self.index: torch.Tensor | None = None

    def select(self, ids: list[int], device) -> None:
        self.index = torch.tensor(ids, device=device) if any(ids) else None


class MultiLoRA(torch.nn.Module):
    """A linear layer (dense or quantised) plus, per row, one of several LoRA updates: y = base(x) + (x A_i^T) B_i^T,
    with adapter i's scale folded into B_i and index 0 all zeros (the base alone)."""

    def __init__(self, base: torch.nn.Module, A: torch.Tensor, B: torch.Tensor, adapters: AdapterSet):
        super().__init__()
        self.base, self.adapters = base, adapters
        self.register_buffer("A", A, persistent=False)  # [n + 1, r, in]
        self.register_buffer("B", B, persistent=False)  # [n + 1, out, r]

    def forward(self, x):
        y = self.base(x)
        idx = self.adapters.index
        if idx is None:
            return y
        a, b = self.A[idx], self.B[idx]
        return y + torch.bmm(torch.bmm(x.to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2)).to(y.dtype)


def _adapter_updates(cfg: ModelConfig, folder: Path) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(layer, fused module): (A, scale * B)} of an adapter folder in either format."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise LmstackError(f"{folder}: not a LoRA adapter folder (no adapter_config.json)")
    if is_hf_adapter(folder):
        state, args = fused_state(cfg, folder)
        r, alpha, ranks, alphas = args["r"], args["lora_alpha"], args["rank_pattern"], args["alpha_pattern"]
    else:  # lmstack's older adapters, on its own module names
        conf = json.loads((folder / "adapter_config.json").read_text())
        state, r, alpha, ranks, alphas = load_file(str(folder / "adapter_model.safetensors")), conf["r"], \
            conf["lora_alpha"], {}, {}
    out = {}
    for k, A in state.items():
        m = _OURS.search(k)
        if m is None or m.group(3) != "A":
            continue
        i, module = int(m.group(1)), m.group(2)
        scale = alphas.get(module, alpha) / ranks.get(module, r)
        out[i, module] = (A.float(), state[k.replace("lora_A", "lora_B")].float() * scale)
    return out


def attach_adapters(model, adapters: list[tuple[str, Path]]) -> AdapterSet:
    """Serve LoRA adapters (name, folder) beside `model` (an lmstack Transformer, dense or quantised): each adapted
    linear layer becomes a MultiLoRA holding every adapter's update (ranks padded to the largest with zeros); the
    returned AdapterSet (also `model.adapters`) picks each row's adapter. A folder that does not fit the model is a
    one-line error naming it."""
    cfg = model.cfg
    sets = [(name, _adapter_updates(cfg, folder), folder) for name, folder in adapters]
    aset = AdapterSet([name for name, _, _ in sets])
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    targets = sorted({key for _, ups, _ in sets for key in ups})
    for i, module in targets:
        block = model.blocks[i]
        parent = block.attn if module in ("qkv", "o_proj") else block.mlp
        base = getattr(parent, module)
        out_f, in_f = base.out_features, base.in_features
        R = max(ups[i, module][0].shape[0] for _, ups, _ in sets if (i, module) in ups)
        A = torch.zeros(len(sets) + 1, R, in_f)
        B = torch.zeros(len(sets) + 1, out_f, R)
        for j, (name, ups, folder) in enumerate(sets, start=1):
            if (i, module) not in ups:
                continue
            a, b = ups[i, module]
            if a.shape[1] != in_f or b.shape[0] != out_f:
                raise LmstackError(f"--lora {name}={folder}: adapter of blocks.{i}.{module} is {tuple(b.shape[:1])} x "
                                   f"{tuple(a.shape[1:])}, the model's layer {out_f} x {in_f} (another base model?)")
            A[j, :a.shape[0]], B[j, :, :a.shape[0]] = a, b
        setattr(parent, module, MultiLoRA(base, A.to(device, dtype), B.to(device, dtype), aset))
    model.adapters = aset
    return aset

