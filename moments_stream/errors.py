"""The one exception hierarchy every stage raises for bad input or a broken environment.

Each error carries a ``fix``: the sentence a user needs to get unstuck. The CLIs print
``error: <message>`` and ``fix: <fix>`` and exit non-zero instead of a traceback.
"""

from __future__ import annotations


class MomentsError(Exception):
    """Base class: an expected failure with a message and the action that fixes it."""

    exit_code = 2

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class VideoDecodeError(MomentsError):
    """A file that is not a decodable video: corrupt, empty, truncated, wrong format."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"cannot decode video {path!r}: {reason}",
            fix="check that the file is a complete video (mp4/avi/mkv/webm/mov) that ffmpeg can play",
        )
        self.path = path
        self.reason = reason


class AssetError(MomentsError):
    """Weights or categories that cannot be found, downloaded or verified."""


class CheckpointError(MomentsError):
    """A checkpoint that does not fit the Moments in Time ResNet50 release format."""


class ConfigError(MomentsError):
    """Settings or environment that make the pipeline unable to start."""


class RedisUnavailableError(MomentsError):
    """Redis cannot be reached, or refuses our credentials."""


class StorageUnavailableError(MomentsError):
    """Object storage could not be reached for longer than a consumer waits; the video is retried."""
