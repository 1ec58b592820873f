"""The OpenAI-compatible HTTP server and web chat page (`lmstack serve`); see docs/serving.md."""
