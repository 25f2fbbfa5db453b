"""Ray Serve application: the aligned model behind an OpenAI-compatible HTTP API."""
