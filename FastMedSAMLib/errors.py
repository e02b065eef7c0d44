"""Errors users see. Each message says what was wrong and what to do."""


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
