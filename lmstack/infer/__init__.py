"""Inference: cache.py (the KV cache), sampling.py (sampling parameters and logit transforms), stop.py
(stop tokens and strings), request.py (Request, Completion, StreamEvent), engine.py (batched decoding,
streaming, continuous batching), beam.py (beam search), logprobs.py (the one log-prob kernel, perplexity),
prompting.py (few-shot, chain of thought, self-consistency)."""
