"""Every error visionflow raises on purpose, in one tree.

    VisionflowError
    ├── ConfigError                 a config file or value is wrong (CLI exit code 2)
    ├── SourceError                 a video source failed
    │   ├── SourceOpenError         could not open / connect (retried with backoff)
    │   ├── SourceStalledError      no frame within the watchdog timeout (reopened)
    │   ├── SourceEndedError        a finite source reached its end (not looped)
    │   └── SourceDecodeError       the bitstream could not be decoded (corrupt input)
    ├── EngineError                 an inference backend failed
    │   ├── EngineUnavailableError  its library is not installed / no device for it
    │   ├── ModelError              the model file is missing or has the wrong shape
    │   └── DeviceLostError         a sticky CUDA error: the worker exits and is restarted
    ├── PublishError                Redis could not take an entry (buffered and retried)
    ├── InvalidTransitionError      a stream state machine was asked for an illegal move
    ├── ServerError                 an embedded Redis-compatible server could not start
    └── ConsumerError               a consumer group could not be set up (visionflow consume)

Every message names what was wrong (file, stream id, field, URL with its password
redacted) so that an operator can act on it without reading the code.
"""

from __future__ import annotations


class VisionflowError(Exception):
    """Base of every error raised on purpose by visionflow."""


class ConfigError(VisionflowError):
    """A config file or value is invalid; the message names file, stream and field."""


class SourceError(VisionflowError):
    """A video source failed.

    ``permanent`` errors (a local file that does not exist or is not a video) are not
    retried: the stream goes to ``failed`` at once instead of backing off.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class SourceOpenError(SourceError):
    """The source could not be opened (unreachable, refused, timed out, not found)."""


class SourceStalledError(SourceError):
    """The source delivered no frame within the watchdog timeout."""


class SourceEndedError(SourceError):
    """A finite source (file, not looped) reached its end."""


class SourceDecodeError(SourceError):
    """The bitstream could not be demuxed or decoded."""


class EngineError(VisionflowError):
    """An inference backend failed."""


class EngineUnavailableError(EngineError):
    """The backend's library is not installed, or there is no device for it."""


class ModelError(EngineError):
    """The model file is missing, unreadable, or not of the expected layout."""


class DeviceLostError(EngineError):
    """A sticky CUDA error (illegal address, device-side assert, ECC...) poisoned the
    worker's CUDA context: nothing more can run in that process, so it exits and the process
    group starts a fresh one."""


class PublishError(VisionflowError):
    """Redis did not accept a write."""


class InvalidTransitionError(VisionflowError):
    """A stream state machine was asked for a transition its table forbids."""


class ServerError(VisionflowError):
    """An embedded Redis-compatible server could not be started."""


class ConsumerError(VisionflowError):
    """A consumer group could not be set up on a detections stream."""
