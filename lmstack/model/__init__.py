"""The Transformer, its configs and presets, and the checkpoint format (Hugging Face folders, GGUF)."""
