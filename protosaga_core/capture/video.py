"""Frames of a video worth posing: the sharpest frame of each of `count` equal stretches of the video.

Equal stretches keep the frames spread over the whole path of the camera; within a stretch, the frame with
the largest variance of the Laplacian (on a small grey copy) is the least blurred by motion or focus. The
video is decoded twice: once to score every frame (a score each, nothing else kept), once to write the
chosen ones, so memory does not grow with the video's length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io.atomic import atomic_open
from .errors import CaptureError

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
SCORE_WIDTH = 320
"""Frames are scored on a grey copy this wide: blur shows at this size, and the scoring pass stays cheap."""
JPEG_QUALITY = 95


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def laplacian_variance(gray: np.ndarray) -> float:
    """Sharpness of a grey image: the variance of its 4-neighbour Laplacian. [H, W] float"""
    laplacian = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float(laplacian.var())


def pick_frames(sharpness: np.ndarray, count: int) -> np.ndarray:
    """The sharpest frame of each of `count` equal stretches of the video (every frame when there are fewer).

    Args:
        sharpness: one score per decoded frame, in order. [F]
        count: how many frames to keep.

    Returns:
        Frame indices, increasing. [min(count, F)] int64
    """
    frames = len(sharpness)
    if frames <= count:
        return np.arange(frames)
    bounds = np.linspace(0, frames, count + 1).round().astype(np.int64)
    return np.array([start + int(np.argmax(sharpness[start:end])) for start, end in zip(bounds[:-1], bounds[1:])])


def frame_name(index: int) -> str:
    return f"frame_{index + 1:05d}.jpg"


def extract_frames(video: Path, folder: Path, count: int, progress: bool = True) -> list[str]:
    """Write the `count` chosen frames of `video` to `folder` as JPEGs; returns their names, in video order.

    Raises:
        CaptureError: the file cannot be decoded as a video, or holds no frame.
    """
    sharpness = np.array(
        [laplacian_variance(gray) for gray in _decoded(video, "scoring frames", progress, _grey_thumbnail)], dtype=np.float64
    )
    if len(sharpness) == 0:
        raise CaptureError(f"{video}: holds no video frame")
    chosen = pick_frames(sharpness, count)
    wanted = set(chosen.tolist())
    names = []
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(_decoded(video, "writing frames", progress, _rgb_image, stop=int(chosen[-1]) + 1)):
        if index in wanted:
            names.append(frame_name(index))
            with atomic_open(folder / names[-1]) as handle:
                image.save(handle, format="JPEG", quality=JPEG_QUALITY)
    return names


def _grey_thumbnail(frame) -> np.ndarray:
    width = min(SCORE_WIDTH, frame.width)
    height = max(1, round(frame.height * width / frame.width))
    return frame.to_ndarray(format="gray", width=width, height=height).astype(np.float32)


def _rgb_image(frame) -> Image.Image:
    return frame.to_image()


def _decoded(video: Path, desc: str, progress: bool, convert, stop: int | None = None):
    """Each frame of the video's first video stream, converted, up to frame `stop`."""
    try:
        import av
    except ImportError as err:
        raise CaptureError(f"{video}: reading videos needs PyAV (pip install av)") from err
    try:
        container = av.open(str(video))
    except (av.error.FFmpegError, OSError) as err:
        raise CaptureError(f"{video}: cannot be opened as a video ({err})") from None
    with container:
        if not container.streams.video:
            raise CaptureError(f"{video}: holds no video stream")
        stream = container.streams.video[0]
        total = stop if stop is not None else (stream.frames or None)  # some containers do not say
        with tqdm(total=total, desc=desc, unit="frame", disable=not progress) as bar:
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if stop is not None and index >= stop:
                        return
                    bar.update()
                    yield convert(frame)
            except av.error.FFmpegError as err:
                raise CaptureError(f"{video}: decoding failed at frame {bar.n} ({err})") from None
