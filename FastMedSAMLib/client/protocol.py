"""The wire protocol shared by `FastMedSAMLib.server` and `RemoteSession`: paths, headers, the version, and how
errors travel (JSON `{"error": {"type": <errors.py class name>, "message": ...}}`)."""
from __future__ import annotations

from typing import Dict, Type

from .. import errors

API_VERSION = "v1"
PREFIX = f"/{API_VERSION}"

PATH_HEALTH = "/healthz"
PATH_MODELS = f"{PREFIX}/models"
PATH_IMAGE = PREFIX + "/images/{digest}"  # HEAD: does the server hold it; PUT: upload it (a frame)
PATH_SESSIONS = f"{PREFIX}/sessions"  # POST {model, image, window, pause}
PATH_SESSION = PREFIX + "/sessions/{session_id}"  # GET info, DELETE
PATH_PREDICT = PREFIX + "/sessions/{session_id}/predict"  # POST prompts -> a mask frame, or 202 + a job
PATH_PREFETCH = PREFIX + "/sessions/{session_id}/prefetch"  # POST {center, slices, pause}: encode in the background
PATH_CACHE = PREFIX + "/models/{model}/cache"  # the model's embedding cache: GET info, DELETE clears
PATH_JOB = PREFIX + "/jobs/{job_id}"  # GET progress / the result frame, DELETE cancels

# Answers the client handles itself (not errors.py types): 410 the session/job is gone (expired, server
# restarted) -> rebuild it from the digest; 409 on opening a session: the server lacks the image -> upload it.
GONE = "SessionGone"
IMAGE_MISSING = "ImageMissing"

FRAME_MEDIA_TYPE = "application/x-fastmedsam-frame"
HEADER_AUTH = "Authorization"  # "Bearer <token>"
HEADER_RETRY_AFTER = "Retry-After"
HEADER_SERVER_MS = "X-FastMedSAM-Server-Ms"  # time the server spent on the request, queue included
HEADER_ROUTE = "serve_multiplexed_model_id"  # the image digest: Ray Serve routes prompts on one image to one replica

# Errors the server reports by class name; the client raises the same type again.
ERROR_TYPES: Dict[str, Type[errors.FastMedSAMError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.FastMedSAMError)
}

# HTTP status for each error type the server raises (anything else FastMedSAMError: 400).
STATUS_FOR = {
    "AuthError": 401,
    "LimitError": 413,
    "BackendBusyError": 503,
    "TooManySessionsError": 429,
    "RegistryError": 404,
    "WeightsError": 503,
    "DeviceError": 503,
    "JobCancelledError": 409,
}


def error_body(error: errors.FastMedSAMError) -> Dict[str, Dict[str, str]]:
    return {"error": {"type": type(error).__name__, "message": str(error)}}
