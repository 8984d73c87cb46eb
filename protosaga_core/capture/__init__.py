"""Photos or a video to a posed dataset (`protosaga colmap`): frames, SIFT, matching, mapping, undistortion."""

from .errors import CaptureError
from .photos import is_capture
from .posing import CaptureReport, ColmapConfig, pose_capture

__all__ = ["CaptureError", "CaptureReport", "ColmapConfig", "is_capture", "pose_capture"]
