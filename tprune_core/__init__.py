"""tprune_core: token pruning in audio transformers."""
__version__ = "0.1.0"
