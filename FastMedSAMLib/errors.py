"""Errors users see. Each message says what was wrong and what to do.

Every error FastMedSAM raises on purpose derives from `FastMedSAMError`: the CLI prints it as one line and exits 2,
the server maps it to a 4xx answer, and the client raises the same type again. Internal invariants (bugs) stay
plain `ValueError` / `RuntimeError`.
"""


class FastMedSAMError(Exception):
    """Base class for every error FastMedSAM raises on purpose."""


class PromptError(FastMedSAMError, ValueError):
    """A prompt is malformed, degenerate, outside the image, or of a type the model cannot use."""


class ImageError(FastMedSAMError, ValueError):
    """An image cannot be used (unreadable file, NaN/Inf voxels, unsupported dimensionality)."""


class WeightsError(FastMedSAMError):
    """Model weights are missing, corrupt (sha256 mismatch) or cannot be fetched."""


class CheckpointError(FastMedSAMError):
    """A checkpoint does not match the architecture (missing/unexpected keys, wrong shapes)."""


class RegistryError(FastMedSAMError, ValueError):
    """The registry file is missing or malformed, or names no such model."""


class PauseError(FastMedSAMError, ValueError):
    """A bad pause knob value, or token pausing asked of a model that has no pause heads."""


class DeviceError(FastMedSAMError, ValueError):
    """The compute device asked for does not exist here (e.g. 'cuda' on a machine torch sees no GPU on)."""


class BackendError(FastMedSAMError, ValueError):
    """A runtime (torch-exact, torch, onnxruntime, ...) is unknown, not offered for this model, or its packages are
    not installed here."""
