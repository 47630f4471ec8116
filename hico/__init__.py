"""HiCo: hierarchical contrastive pretraining for ultrasound video models (ACCV 2022)."""

from hico.errors import HiCoError

__version__ = "0.1.0"
__all__ = ["HiCoError", "__version__"]
