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


class RuntimeChoiceError(FastMedSAMError, ValueError):
    """A runtime (torch-exact, torch, onnxruntime, ...) is unknown, not offered for this model, or its packages are
    not installed here."""


class BackendError(FastMedSAMError):
    """The prediction backend (a FastMedSAM server) could not serve the request; the message says why."""


class BackendUnreachableError(BackendError):
    """No FastMedSAM server answers at the URL (not started, wrong address or port, network down)."""


class AuthError(BackendError):
    """The server refused the token: missing, wrong, or not allowed for this request."""


class BackendBusyError(BackendError):
    """The server is at capacity (too many sessions or queued requests); retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManySessionsError(BackendBusyError):
    """This token already holds as many sessions as the server allows; close one or wait for idle ones to expire."""


class LimitError(BackendError, ValueError):
    """A request exceeds a server limit (body bytes, voxels); the message names the limit."""


class UploadError(BackendError, ValueError):
    """An uploaded image was truncated, corrupt, or does not match the digest it was sent under."""


class JobCancelledError(BackendError):
    """A long prediction (3D propagation) was cancelled before it finished."""
