"""ootd_lib — OOTDiffusion (outfitting-fusion latent diffusion for virtual try-on) re-implemented on stock diffusers.

The modules follow the pipeline stages: ``toydata`` → ``data`` → ``masking``/``estimators`` → ``conditioning`` →
``fusion``/``models``/``guidance`` → ``pipeline`` → ``training`` → ``evaluation`` → ``playground``.
Heavy modules are imported lazily so ``import ootd_lib`` stays fast.
"""

from .errors import (  # noqa: F401
    ConfigError,
    DataError,
    ImageFileError,
    InputError,
    OOTDError,
    OOTDWarning,
    PoseError,
    TrainingError,
    UnsupportedError,
    WeightsError,
)
from .progress import apply_environment as _apply_progress_environment

_apply_progress_environment()  # OOTD_PROGRESS=0: no progress bars from ootd_lib or the libraries it uses

__version__ = "0.1.0"

_LAZY = {
    "OOTDPipeline": ("pipeline", "OOTDPipeline"),
    "tryon": ("pipeline", "tryon"),
    "OOTDModel": ("models", "OOTDModel"),
    "agnostic_mask": ("masking", "agnostic_mask"),
    "VitonHDDataset": ("data", "VitonHDDataset"),
    "DressCodeDataset": ("data", "DressCodeDataset"),
    "Config": ("config", "Config"),
    "TryOnPlayground": ("playground", "TryOnPlayground"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'ootd_lib' has no attribute {name!r}")
