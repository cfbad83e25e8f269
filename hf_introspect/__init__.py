"""hf_introspect: LLM activations + behaviour for introspection experiments, as HF datasets."""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__", "CollectConfig", "collect", "load_run", "layer_matrix"]


def __getattr__(name):
    # Lazy: importing the package must not import torch/transformers (fast CLI --help, light tests).
    if name == "CollectConfig":
        from .config import CollectConfig

        return CollectConfig
    if name == "collect":
        from .collection.run import collect

        return collect
    if name in ("load_run", "layer_matrix"):
        from .runs import read

        return getattr(read, name)
    raise AttributeError(name)
