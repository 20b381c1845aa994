"""The runner: Hydra configs to a versioned, reproducible evaluation run; the engine lives in runner.engine."""
