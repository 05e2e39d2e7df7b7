"""tprune_core: token pruning in audio transformers."""
import warnings

__version__ = "0.1.0"

# timm imports huggingface_hub, which imports tqdm.auto; inside a notebook without ipywidgets that warns on every
# chapter. Our own progress bars are plain-text tqdm, so the widget warning says nothing useful.
warnings.filterwarnings("ignore", message="IProgress not found")
