"""Video frames by timestamp, decoded with PyAV (FFmpeg; its wheel decodes AV1 with libdav1d, and h264,
HEVC, ...) on CPU, one frame at a time: never a whole video in memory.

A `VideoFrame` names a frame (file, time within the file, the episode it belongs to); `VideoFrames`
decodes them in the process that asks (a DataLoader worker), keeping a few files open. Each open
file holds a decoder and its last `keep` decoded frames (an image history of C steps asks for
t-C+1 .. t, then t-C+2 .. t+1: keep C); a request matching one of them is answered from it, one at
or shortly after the last frame's time decodes onward from there (an ordered pass decodes each frame
once), any other seeks to the keyframe before it and decodes forward. A frame is accepted when its
time is within `tolerance_s` of the requested one; past the last frame, or where the nearest frame
is farther, the error names the file, the episode and the times.

Shapes: H, W the video's height and width.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pg_vla.data.lerobot.config import LeRobotDataError

MAX_OPEN_FILES = 8  # per process; least recently used ones are closed
DECODE_AHEAD_S = 2.0  # a later request within this many seconds decodes on instead of seeking


@dataclass(frozen=True)
class VideoFrame:
    """A frame to decode: cheap to hold in a shuffle buffer."""

    file: str
    time: float  # seconds from the start of the file (the episode's offset in the file + the row's timestamp)
    episode: int  # episode_index, for messages
    key: str  # camera feature key, for messages


class _OpenVideo:
    def __init__(self, path: str, keep: int = 1):
        import av

        self.path = path
        self.recent: deque[tuple[float, np.ndarray]] = deque(maxlen=keep)  # (time, frame), the last decoded last
        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = 1  # DataLoader workers are the parallelism
        self.frames = None  # decode iterator, None until the first seek
        self.last: tuple[float, np.ndarray] | None = None  # (time, (H, W, 3) uint8) of the last decoded frame

    def close(self) -> None:
        self.container.close()

    def _seek(self, time: float) -> None:
        target = max(int(time / self.stream.time_base), 0)
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        self.last = None

    def frame_at(self, request: VideoFrame, tolerance: float) -> np.ndarray:
        time = request.time
        for recent_time, pixels in reversed(self.recent):
            if abs(recent_time - time) <= tolerance:
                return pixels
        if self.frames is None or self.last is None or time < self.last[0] or time - self.last[0] > DECODE_AHEAD_S:
            self._seek(time)
        previous = self.last[0] if self.last is not None else None
        for frame in self.frames:
            frame_time = float(frame.time)
            if frame_time < time - tolerance:
                previous = frame_time
                continue  # not converted: only the wanted frame becomes an array
            self.last = (frame_time, frame.to_ndarray(format="rgb24"))
            self.recent.append(self.last)
            if frame_time <= time + tolerance:
                return self.last[1]
            nearest = frame_time if previous is None or frame_time - time < time - previous else previous
            raise LeRobotDataError(
                self.path,
                f"camera {request.key!r}: no frame within {tolerance} s of "
                f"{time:.6f} s (nearest frame at {nearest:.6f} s)",
                request.episode,
            )
        self.frames, self.last = None, None
        end = f"the last frame is at {previous:.6f} s" if previous is not None else "no frame after the seek point"
        raise LeRobotDataError(
            self.path, f"camera {request.key!r}: timestamp {time:.6f} s is outside the video ({end})", request.episode
        )


class VideoFrames:
    """Decodes `VideoFrame`s, keeping at most `max_open` files open (per process), each with its last
    `keep` decoded frames."""

    def __init__(self, tolerance_s: float, max_open: int = MAX_OPEN_FILES, keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.tolerance_s, self.max_open, self.keep = tolerance_s, max_open, keep
        self.open: OrderedDict[str, _OpenVideo] = OrderedDict()

    def frame(self, request: VideoFrame) -> np.ndarray:
        """-> (H, W, 3) uint8, RGB."""
        video = self.open.get(request.file)
        if video is None:
            if not Path(request.file).is_file():
                raise LeRobotDataError(
                    request.file, f"video file of camera {request.key!r} is missing", request.episode
                )
            try:
                video = _OpenVideo(request.file, self.keep)
            except Exception as err:  # PyAV raises its own FFmpeg error types
                raise LeRobotDataError(
                    request.file, f"cannot open the video of camera {request.key!r}: {err}", request.episode
                ) from err
            self.open[request.file] = video
            while len(self.open) > self.max_open:
                self.open.popitem(last=False)[1].close()
        self.open.move_to_end(request.file)
        return video.frame_at(request, self.tolerance_s)

    def close(self) -> None:
        while self.open:
            self.open.popitem()[1].close()
