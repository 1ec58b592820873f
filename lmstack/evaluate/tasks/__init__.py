"""Ready task configs (YAML data files, read by lmstack.evaluate.config.registry)."""
