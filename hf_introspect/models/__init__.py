"""Models: loading a model and its adapter (local, Hub, GGUF through a conversion cache)."""
