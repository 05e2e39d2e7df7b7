"""tprune_core: token pruning in audio transformers.

Layers, each importing only from the ones before it (tests/test_architecture.py checks it):
``errors``, ``rules``, ``fsio``, ``source`` (torch-free basics) -> ``data`` -> ``nn`` -> ``training`` -> ``analyses``
-> ``book`` -> ``cli``.

The modules used to sit side by side in this folder; their old names still import, as the same module objects:
``from tprune_core import models, pruning, macs`` and ``import tprune_core.zoo`` give ``tprune_core.nn.models`` ...
``tprune_core.training.zoo`` (``MOVED`` below).
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# timm imports huggingface_hub, which imports tqdm.auto; inside a notebook without ipywidgets that warns on every
# chapter. Our own progress bars are plain-text tqdm, so the widget warning says nothing useful.
warnings.filterwarnings("ignore", message="IProgress not found")

LAYERS = {
    "data": ("audio", "features", "clips", "datasets", "folders", "multilabel", "synth", "cache", "fetch", "targets",
             "streaming"),
    "nn": ("models", "pruning", "macs"),
    "training": ("runtime", "loop", "distributed", "train", "mae", "evaluation", "release", "zoo"),
    "analyses": ("experiments", "importance", "analysis", "verdicts", "results", "plots", "bench"),
    "book": ("study",),
}
MOVED = {name: f"{__name__}.{layer}.{name}" for layer, names in LAYERS.items() for name in names}


def __getattr__(name: str):
    """``from tprune_core import zoo`` (or ``tprune_core.zoo``) under its old flat name, imported on first use."""
    if name in MOVED:
        return importlib.import_module(MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _OldName(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import tprune_core.zoo`` / ``from tprune_core.zoo import X``: the module at its new place, under both names
    in sys.modules, so patching either name patches the one module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + ".") and fullname.rpartition(".")[2] in MOVED \
                and fullname.count(".") == 1:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name.rpartition(".")[2]])

    def exec_module(self, module):
        pass   # already executed under its new name


if not any(isinstance(f, _OldName) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldName())
