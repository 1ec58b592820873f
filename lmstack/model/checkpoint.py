"""Checkpoints are Hugging Face model folders; `load` also takes a GGUF file or a hub name.

A folder holds config.json, model.safetensors, tokenizer.json (+ tokenizer_config.json),
generation_config.json and lmstack.json (stage, parent, arguments, metrics). Writes are atomic: the
folder is built under a temporary name and renamed into place, so a killed run never leaves half a
checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmstack.errors import LmstackError
from lmstack.model.adapter import is_hf_adapter, load_hf_adapter, save_adapter
from lmstack.model.config import ModelConfig
from lmstack.model.gguf import read_gguf
from lmstack.model.hf import config_from_hf, config_to_hf, state_from_hf, state_to_hf
from lmstack.model.quant import quantize_model, refuse_quantized
from lmstack.model.transformer import Transformer, rope_inv_freq
from lmstack.tokenizer import Tokenizer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise LmstackError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise LmstackError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def build_model(cfg: ModelConfig, device="cpu", dtype=torch.float32, init: bool = True) -> Transformer:
    """A model with fresh weights (init=True) or uninitialised storage for loading into (fast for big ones)."""
    if init:
        return Transformer(cfg).to(device=device, dtype=dtype)
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device).to(dtype)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    if not cfg.is_gpt2:
        model.inv_freq = rope_inv_freq(cfg).to(device)
    return model


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.name.endswith(".safetensors"):
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LmstackError(f"{path}: weights file not found") from None
    except Exception as e:  # safetensors/pickle errors have many types; all mean the file is unusable
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmstackError(f"{path}: corrupt or unreadable weights file ({msg})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        p = folder / name
        if not p.exists():
            continue
        if name.endswith(".index.json"):
            index = read_json(p)
            sd = {}
            for shard in sorted(set(index.get("weight_map", {}).values())):
                sd.update(_load_file(folder / shard))
            return sd
        return _load_file(p)
    raise LmstackError(f"{folder}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")


@dataclass
class Checkpoint:
    """A model with its tokenizer, generation config and lmstack.json: what a checkpoint folder holds.

    `lmstack.lm.LM` (what `lmstack.load` returns) adds generation on top.
    """

    model: Transformer
    tokenizer: object | None = None  # lmstack.tokenizer.Tokenizer
    generation_config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # lmstack.json: stage, parent, args, metrics

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device=None, dtype=None):
        self.model.to(device=device, dtype=dtype)
        return self

    def __call__(self, ids) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids (a list, a list of lists or a tensor)."""
        if not torch.is_tensor(ids):
            ids = torch.tensor(ids if ids and isinstance(ids[0], list) else [ids])
        with torch.inference_mode():
            return self.model(ids.to(self.device))

    def encode(self, text: str) -> list[int]:
        self._need_tokenizer()
        return self.tokenizer.encode(text)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise LmstackError("this checkpoint has no tokenizer (tokenizer.json); pass token ids instead")

    def save(self, path, **meta) -> Path:
        return save(self, path, **meta)


def save(lm: Checkpoint, path, writer=None, state_dict=None, **meta) -> Path:
    """Write a checkpoint folder atomically. Extra keyword arguments are merged into lmstack.json.

    writer(tmp_folder), if given, adds files (a trainer state) before the folder is renamed into place.
    state_dict: the weights to write when the module's own are sharded (FSDP gathers them first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        if is_peft(lm.model):
            # A LoRA run: the folder holds the adapter in peft's format on transformers' module names (so peft and
            # vLLM load it on the base's transformers model) and names its base in lmstack.json; load() puts the
            # two back together.
            base = meta.get("parent", lm.meta.get("parent"))
            save_adapter(lm.model, lm.model.get_base_model().cfg, tmp, None if base is None else str(base))
            info = {**lm.meta, **meta, "adapter": True, "base_model": base}
        else:
            cfg = lm.config
            hf = config_to_hf(cfg)
            refuse_quantized(lm.model, "save")
            dtype = lm.model.tok_emb.weight.dtype
            hf["torch_dtype"] = str(dtype).replace("torch.", "")
            (tmp / "config.json").write_text(json.dumps(hf, indent=2))
            sd = state_dict if state_dict is not None else unwrap(lm.model).state_dict()
            save_file(state_to_hf(sd, cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            gen = dict(lm.generation_config)
            gen.setdefault("bos_token_id", cfg.bos_token_id)
            gen.setdefault("eos_token_id", cfg.eos_token_id)
            if cfg.pad_token_id is not None:
                gen.setdefault("pad_token_id", cfg.pad_token_id)
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
            info = {**lm.meta, **meta, "lmstack_config": cfg.to_dict()}
        if lm.tokenizer is not None:
            lm.tokenizer.save(tmp)
        (tmp / "lmstack.json").write_text(json.dumps(info, indent=2, default=str))
        if writer is not None:
            writer(tmp)
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace(tmp: Path, path: Path) -> None:
    """Rename the finished folder into place (the old one moves aside first, then goes)."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Transformer inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _check_tokenizer_fits(tok, cfg: ModelConfig, where):
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise LmstackError(
            f"{where}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}"
        )


def load_folder(folder: Path, device="cpu", dtype=torch.float32, quantize: str | None = None) -> Checkpoint:
    if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        if quantize not in (None, "none", "auto"):
            raise LmstackError(f"{folder}: a LoRA adapter folder; merge it (lmstack merge-lora) to quantise it")
        return load_adapter(folder, device, dtype)
    cfg = config_from_hf(read_json(folder / "config.json"), where=str(folder / "config.json"))
    sd = state_from_hf(read_weights(folder), cfg, where=str(folder))
    model = build_model(cfg, device=device, dtype=dtype, init=False)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    model = quantize_checkpoint(model, quantize).eval()
    tok = None
    if (folder / "tokenizer.json").exists() or (folder / "vocab.json").exists():
        tok = Tokenizer.load(folder)
        _check_tokenizer_fits(tok, cfg, folder)
    gen = read_json(folder / "generation_config.json") if (folder / "generation_config.json").exists() else {}
    meta = read_json(folder / "lmstack.json") if (folder / "lmstack.json").exists() else {}
    meta.pop("lmstack_config", None)
    return Checkpoint(model, tok, gen, meta)


def load_adapter(folder: Path, device="cpu", dtype=torch.float32) -> Checkpoint:
    """A LoRA adapter folder (lmstack's, or peft's on a transformers model): its base model (lmstack.json's
    base_model, else adapter_config.json's base_model_name_or_path) with the adapter on."""
    from peft import PeftModel  # optional (the lora extra), and slow to import

    meta = read_json(folder / "lmstack.json") if (folder / "lmstack.json").exists() else {}
    base = meta.get("base_model") or read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    if not base:
        raise LmstackError(f"{folder}: adapter without a base model (lmstack.json's base_model or "
                           "adapter_config.json's base_model_name_or_path); use merge-lora --base")
    lm = load(base, device, dtype)
    if is_hf_adapter(folder):
        model = load_hf_adapter(lm.model, lm.config, folder)
    else:  # an adapter on lmstack's own module names (written before adapters were saved on transformers' names)
        model = PeftModel.from_pretrained(lm.model, str(folder)).eval()
    return Checkpoint(model, lm.tokenizer, lm.generation_config, meta)


# GGUF types -> the weight-only kernel that holds them without losing more than the file did: 4-bit
# types are the int4 grid (Q4_0/Q4_1 exactly, see quant.py), the 5- to 8-bit ones requantise to int8 rows.
_GGUF_BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "IQ4_NL": 4, "IQ4_XS": 4, "Q2_K": 4, "Q3_K": 4,
              "Q5_0": 8, "Q5_1": 8, "Q5_K": 8, "Q6_K": 8, "Q8_0": 8, "Q8_K": 8}


def gguf_plan(types: dict[str, str], cfg: ModelConfig) -> dict[str, int]:
    """{linear layer: 4 | 8} for a GGUF file's quantised tensors (a fused layer takes its widest part; a
    layer with a float part stays dense). Empty for a float file."""
    def bits(*names):
        b = [_GGUF_BITS.get(types.get(n, "F32")) for n in names]
        return None if None in b else max(b)

    plan = {}
    for i in range(cfg.n_layer):
        if cfg.is_gpt2:
            h = f"transformer.h.{i}."
            parts = {"attn.qkv": [h + "attn.c_attn.weight"], "attn.o_proj": [h + "attn.c_proj.weight"],
                     "mlp.up": [h + "mlp.c_fc.weight"], "mlp.down": [h + "mlp.c_proj.weight"]}
        else:
            a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            parts = {"attn.qkv": [a + f"{p}_proj.weight" for p in "qkv"], "attn.o_proj": [a + "o_proj.weight"],
                     "mlp.up": [m + "gate_proj.weight", m + "up_proj.weight"], "mlp.down": [m + "down_proj.weight"]}
        for dst, names in parts.items():
            if (b := bits(*names)) is not None:
                plan[f"blocks.{i}.{dst}"] = b
    embed = "transformer.wte.weight" if cfg.is_gpt2 else "model.embed_tokens.weight"
    head = bits(embed if cfg.tie_embeddings else "lm_head.weight")
    if head is not None:
        plan["lm_head"] = head
    return plan


def quantize_checkpoint(model, quantize: str, plan: dict[str, int] | None = None):
    """Apply `--quantize`: none, int8, int4, or auto (a GGUF file's own plan; nothing for a dense folder)."""
    if quantize in (None, "none") or (quantize == "auto" and not plan):
        return model
    if quantize not in ("auto", "int8", "int4"):
        raise LmstackError(f"--quantize {quantize!r}: use auto, none, int8 or int4")
    return quantize_model(model, plan if quantize == "auto" else int(quantize[3:]))


def load_gguf(path: Path, device="cpu", dtype=torch.float32, quantize: str | None = None) -> Checkpoint:
    g = read_gguf(path, dtype=dtype)
    cfg = config_from_hf(g.hf_config, where=str(path))
    sd = state_from_hf(g.state_dict, cfg, where=str(path))
    g.state_dict = None
    model = build_model(cfg, device=device, dtype=dtype, init=False)
    model.load_state_dict(sd, strict=True)
    del sd
    model = quantize_checkpoint(model, quantize, gguf_plan(g.tensor_types, cfg)).eval()
    extra_stop = []
    if g.chat_template and "<|im_end|>" in g.chat_template:
        extra_stop = ["<|im_end|>"]
    tok = Tokenizer(g.tokenizer, bos_token=g.bos_token, eos_token=g.eos_token, pad_token=g.pad_token,
                    chat_template=g.chat_template, extra_stop_tokens=extra_stop)
    _check_tokenizer_fits(tok, cfg, path)
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": sorted(tok.stop_ids)}
    return Checkpoint(model, tok, gen, {"source": str(path), "gguf": g.metadata})


def load(path_or_name, device="cpu", dtype=torch.float32, quantize: str | None = None) -> Checkpoint:
    """Load a checkpoint folder, a .gguf file, or a Hugging Face hub name (downloaded when online).

    quantize: None or "none" dense weights in `dtype` (a GGUF file dequantised: what training needs);
    "auto" a GGUF file's quantised tensors stay int4/int8 (a dense folder stays dense); "int8" or
    "int4" every linear layer (quant.py). A quantised model computes in bf16 on the CPU."""
    p = Path(str(path_or_name)).expanduser()
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]
    if p.is_dir():
        return load_folder(p, device, dtype, quantize)
    if p.is_file():
        if p.suffix == ".gguf":
            return load_gguf(p, device, dtype, quantize)
        raise LmstackError(f"{p}: not a checkpoint folder or .gguf file")
    name = str(path_or_name)
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise LmstackError(f"{name}: no such file or folder")
    return load_folder(Path(download(name)), device, dtype, quantize)


def download(name: str) -> str:
    """Fetch a hub repository's model files; offline this is a clear error rather than a hang."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise LmstackError(f"'{name}' is not a local path and the Hugging Face hub is offline (HF_HUB_OFFLINE=1)")
    try:
        from huggingface_hub import snapshot_download  # optional: only to download hub names
    except ImportError:
        raise LmstackError(f"'{name}' is not a local path; install huggingface_hub to download it") from None
    try:
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                       "pytorch_model*.bin"])
    except Exception as e:
        raise LmstackError(f"could not download '{name}' from the Hugging Face hub: {str(e).splitlines()[0]}") \
            from None
