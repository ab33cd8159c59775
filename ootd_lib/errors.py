"""Errors a user can cause. Every message names the offending file or value and says how to fix it."""


class OOTDError(Exception):
    """Base class for all user-facing errors of ootd_lib."""


class ConfigError(OOTDError, ValueError):
    """A configuration value or command-line option is invalid."""


class DataError(OOTDError):
    """A dataset file is missing, unreadable or laid out wrongly."""


class InputError(OOTDError, ValueError):
    """An image, mask or argument passed to a function is unusable (size, mode, range, category...)."""


class ImageFileError(InputError, DataError):
    """An image file is missing, a folder, empty, not an image or corrupt (from :func:`ootd_lib.data.load_rgb`).

    Both an :class:`InputError` (a file the user passed) and a :class:`DataError` (a file inside a dataset)."""


class WeightsError(OOTDError):
    """A weight file is missing, a Git-LFS pointer, truncated or not a valid model."""


class UnsupportedError(OOTDError, NotImplementedError):
    """A model option or call argument that ootd_lib does not implement (raised instead of silently ignoring it)."""


class PoseError(OOTDError):
    """The pose estimator found nobody in the image."""


class TrainingError(OOTDError):
    """Training cannot continue (e.g. too many non-finite losses in a row, bad resume checkpoint)."""


class OOTDWarning(UserWarning):
    """Something works but is probably not what the user wants (an hd model on lower-body garments, an empty mask, a
    picture far from 3:4). The CLI prints these as one ``ootd <command>: warning: ...`` line."""
