"""One switch for every progress bar: ``OOTD_PROGRESS=0``.

With ``OOTD_PROGRESS=0`` in the environment (or after :func:`disable_progress_bars`), ootd_lib shows no progress bar
(toy data, training, evaluation, the pipeline's sampling loop) and neither do diffusers, transformers and
huggingface_hub while models load, download or save. Set it when executing notebooks for commit: in a notebook tqdm
draws widgets, which are stored as outputs that show as "Loading widget…" on GitHub and Colab.
"""

from __future__ import annotations

import os

ENV_VAR = "OOTD_PROGRESS"
_OFF = ("0", "false", "no", "off")


def progress_enabled(requested: bool = True) -> bool:
    """Whether to show a bar the caller ``requested``: always False under ``OOTD_PROGRESS=0``."""
    return bool(requested) and os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


def disable_progress_bars() -> None:
    """Switch off ootd_lib's bars and those of diffusers, transformers and huggingface_hub, for this process."""
    os.environ[ENV_VAR] = "0"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub (and transformers) when imported later
    import huggingface_hub.utils
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    huggingface_hub.utils.disable_progress_bars()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def apply_environment() -> None:
    """Called on ``import ootd_lib``: under ``OOTD_PROGRESS=0`` the libraries' bars go off too (nothing otherwise)."""
    if not progress_enabled():
        disable_progress_bars()
