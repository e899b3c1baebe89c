"""kling_async: an asyncio-native client for the Kling video API, built around video extension.

>>> from kling_async import KlingClient
>>> async with KlingClient.from_env() as client:  # doctest: +SKIP
...     task = await client.extend_video("vid_1", prompt="the camera rises")
"""

from importlib.metadata import PackageNotFoundError, version

from .auth import BearerAuth, JWTAuth
from .batch import Batch, BatchEvent, BatchEventKind, BatchOutcome
from .callbacks import CallbackReceiver
from .chain import Chain, ChainError, ChainEvent, ChainOutcome, ChainRequest
from .client import KlingClient
from .download import DownloadError, DownloadProgress
from .errors import (
    AmbiguousSubmissionError,
    APIError,
    AuthenticationError,
    ConfigurationError,
    ContentPolicyError,
    InsufficientBalanceError,
    InvalidArgumentError,
    InvalidRequestError,
    KlingError,
    MalformedTaskError,
    NotFoundError,
    NotSentError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    TransportError,
    WatchTimeoutError,
)
from .models import (
    DEFAULT_VIDEO_MODEL,
    EXTENDABLE_MODELS,
    ImageToVideoRequest,
    OrphanedTask,
    Task,
    TaskKind,
    TaskStatus,
    TextToVideoRequest,
    Video,
    VideoExtendRequest,
)
from .policies import PollPolicy, RetryBudget, RetryPolicy
from .telemetry import Telemetry
from .watcher import TaskWatcher

try:
    __version__ = version("kling-async")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_VIDEO_MODEL",
    "EXTENDABLE_MODELS",
    "APIError",
    "AmbiguousSubmissionError",
    "AuthenticationError",
    "Batch",
    "BatchEvent",
    "BatchEventKind",
    "BatchOutcome",
    "BearerAuth",
    "CallbackReceiver",
    "Chain",
    "ChainError",
    "ChainEvent",
    "ChainOutcome",
    "ChainRequest",
    "ConfigurationError",
    "ContentPolicyError",
    "DownloadError",
    "DownloadProgress",
    "ImageToVideoRequest",
    "InsufficientBalanceError",
    "InvalidArgumentError",
    "InvalidRequestError",
    "JWTAuth",
    "KlingClient",
    "KlingError",
    "MalformedTaskError",
    "NotFoundError",
    "NotSentError",
    "OrphanedTask",
    "PermissionDeniedError",
    "PollPolicy",
    "RateLimitError",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "Task",
    "TaskFailedError",
    "TaskKind",
    "TaskStatus",
    "TaskWatcher",
    "Telemetry",
    "TextToVideoRequest",
    "TransportError",
    "Video",
    "VideoExtendRequest",
    "WatchTimeoutError",
    "__version__",
]
