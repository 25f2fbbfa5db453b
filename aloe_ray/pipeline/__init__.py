"""Ray Data wiring of tree generation: specs -> grow (async, shared engine deployments) -> Parquet."""
