"""Tiny random Hugging Face models of the four families, built with `transformers` (the oracle)."""

import torch

FAMILIES = ("gpt2", "llama", "mistral", "qwen2")


def hf_config(family: str, vocab: int = 96, **gpt2):
    # A large init range makes random models produce varied tokens, so the oracles compare real choices.
    import transformers as t

    if family == "gpt2":
        return t.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                            resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=1, eos_token_id=2,
                            initializer_range=0.3, **gpt2)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=2, initializer_range=0.3)
    if family == "llama":
        return t.LlamaConfig(**common, rope_theta=500000.0, tie_word_embeddings=False, attention_bias=True)
    if family == "mistral":
        return t.MistralConfig(**common, sliding_window=5, tie_word_embeddings=False)
    return t.Qwen2Config(**common, tie_word_embeddings=True)


def hf_model(family: str, seed: int = 0, vocab: int = 96, **gpt2):
    import transformers as t

    torch.manual_seed(seed)
    cfg = hf_config(family, vocab, **gpt2)
    cls = {"gpt2": t.GPT2LMHeadModel, "llama": t.LlamaForCausalLM, "mistral": t.MistralForCausalLM,
           "qwen2": t.Qwen2ForCausalLM}[family]
    m = cls(cfg).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so the parity test sees them.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return m
