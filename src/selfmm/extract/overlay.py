"""What the extractor saw, drawn on the clip: landmarks, head pose and the words being said.

The overlay shows the sampled frames the face features come from (VISION_FPS per second),
decoded again exactly as extraction decoded them, with each frame's tracked face: the 468
landmarks as dots, the 68 iBUG points joined into the face's outline, the head's axes from the
fitted pose (red: the face's right-to-left axis, green: up, blue: forward out of the face), and
yaw, pitch and roll in degrees. With `words` (text, start s, end s), the word being said at each
frame is written at the bottom.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import SelfMMError
from ..io import plain_mode
from .face_geometry import IBUG68, head_roll
from .media import decode
from .mesh_faces import FaceTrack, TrackedFace
from .visual import VISION_FPS, VISUAL_SETS

# Suffix -> (FFmpeg container, video codec) of an overlay video.
VIDEO_FORMATS = {".mp4": ("mp4", "libx264"), ".mkv": ("matroska", "libx264"), ".mov": ("mov", "libx264"),
                 ".avi": ("avi", "mpeg4"), ".webm": ("webm", "libvpx-vp9")}
# The iBUG outline, as runs of consecutive points (closed for the eyes and lips).
OUTLINE = ((0, 17, False), (17, 22, False), (22, 27, False), (27, 31, False), (31, 36, False),
           (36, 42, True), (42, 48, True), (48, 60, True), (60, 68, True))
AXIS_CM = 6.0  # length of the drawn head axes on the canonical face
MESH, LINES, TEXT = (80, 220, 120), (255, 255, 255), (255, 255, 0)  # RGB
AXES = ((230, 40, 40), (40, 200, 40), (60, 120, 255))

Word = tuple[str, float, float]  # text, start and end in seconds


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_FORMATS


def current_word(words: Sequence[Word], t: float) -> str | None:
    """The word whose span holds time t (the later one where spans touch), or None."""
    said = None
    for text, start, end in words:
        if start <= t < end:
            said = text
    return said


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour) -> None:
    import cv2

    # A dark outline under the text keeps it readable on any background.
    for width, col in ((3, (0, 0, 0)), (1, colour)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, col, width, cv2.LINE_AA)


def draw_face(image: np.ndarray, face: TrackedFace) -> None:
    """Landmarks, outline and head axes of `face` on an RGB frame, in place."""
    import cv2

    points = face.landmarks[:, :2]
    for x, y in points.astype(np.int32):
        cv2.circle(image, (int(x), int(y)), 1, MESH, -1, cv2.LINE_AA)
    outline = points[IBUG68]
    for start, stop, closed in OUTLINE:
        cv2.polylines(image, [np.round(outline[start:stop]).astype(np.int32)], closed, LINES, 1, cv2.LINE_AA)
    pose = face.pose
    # The canonical axes through the fitted rotation and scale, drawn from the nose tip; the
    # face frame's y points up, the image's down.
    tip = points[4]
    for axis, colour in zip(pose.rotation.T, AXES, strict=True):
        end = tip + AXIS_CM * pose.scale * axis[:2] * np.array([1.0, -1.0])
        cv2.arrowedLine(image, tuple(np.round(tip).astype(int)), tuple(np.round(end).astype(int)), colour,
                        2, cv2.LINE_AA, tipLength=0.15)


def draw_frame(image: np.ndarray, face: TrackedFace | None, t: float, word: str | None) -> np.ndarray:
    """One overlay frame: a copy of RGB `image` with the face, its pose angles, time and word."""
    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    scale = max(0.4, width / 900)
    if face is None:
        _text(out, "no face", (8, int(24 * scale / 0.7)), scale, TEXT)
    else:
        draw_face(out, face)
        yaw, pitch = face.pose.yaw_pitch
        roll = head_roll(face.landmarks)
        _text(out, f"yaw {yaw:+.0f}  pitch {pitch:+.0f}  roll {roll:+.0f}", (8, int(24 * scale / 0.7)),
              scale, TEXT)
    _text(out, f"{t:.1f} s", (8, height - 10), scale * 0.8, TEXT)
    if word:
        import cv2

        big = scale * 1.6
        (w, _), _ = cv2.getTextSize(word, cv2.FONT_HERSHEY_SIMPLEX, big, 2)
        _text(out, word, (max(4, (width - w) // 2), height - int(40 * scale / 0.7)), big, (255, 255, 255))
    return out


class _VideoOut:
    """An overlay video written to a temporary file beside `path`, renamed over it when done."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        container, self.codec = VIDEO_FORMATS[path.suffix.lower()]
        # Named like every temporary file of selfmm's writers (.NAME.XXXX.tmp), which a later
        # run's checks know for what an interrupted write left.
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(self.tmp, plain_mode())
        self.container = av.open(self.tmp, "w", format=container)
        self.stream = None

    def write(self, frame: np.ndarray) -> None:
        import av

        height, width = frame.shape[0] & ~1, frame.shape[1] & ~1  # 4:2:0 wants even sides
        if self.stream is None:
            self.stream = self.container.add_stream(self.codec, rate=int(VISION_FPS))
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), "rgb24")
        for packet in self.stream.encode(picture):
            self.container.mux(packet)

    def close(self, ok: bool) -> None:
        try:
            if ok and self.stream is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            self.container.close()
        finally:
            if ok:
                os.replace(self.tmp, self.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp)


class _FramesOut:
    """PNG frames written into a temporary folder beside `path`, which then takes its place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(self.tmp, plain_mode(folder=True))
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        import cv2

        name = self.tmp / f"frame-{self.count:05d}.png"
        if not cv2.imwrite(str(name), np.ascontiguousarray(frame[:, :, ::-1])):
            raise SelfMMError(f"cannot write {name}")
        self.count += 1

    def close(self, ok: bool) -> None:
        if ok:
            if self.path.exists():
                shutil.rmtree(self.path)  # the CLI checked it holds only earlier overlay frames
            os.replace(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def draw_overlay(video: str | os.PathLike, faces: FaceTrack, out: str | os.PathLike,
                 words: Sequence[Word] | None = None) -> int:
    """Draw `faces` (extraction's track of `video`, from a mesh visual set) on the video's sampled
    frames and write them to `out`: a video when its suffix is one of VIDEO_FORMATS', else a folder
    of PNG frames (frame-00000.png, ...). `words`: (text, start, end) in seconds. Returns the
    number of frames written; `out` appears only once complete."""
    frame_set = VISUAL_SETS["mesh"]  # decoded as the mesh sets decode, so the frames match
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = _VideoOut(out) if is_video_path(out) else _FramesOut(out)
    except OSError as exc:
        raise SelfMMError(f"cannot write the overlay {out}: {exc.strerror or exc}") from None
    words = list(words or ())
    index = 0

    def on_frame(image: np.ndarray, t: float) -> None:
        nonlocal index
        face = faces.faces[index] if index < len(faces.faces) else None
        writer.write(draw_frame(image, face, t, current_word(words, t)))
        index += 1

    ok = False
    try:
        decode(video, VISION_FPS, frame_format=frame_set.frame_format, frame_width=frame_set.frame_width,
               on_frame=on_frame)
        if not index:
            raise SelfMMError(f"{video}: no video frames to draw the overlay on")
        ok = True
    finally:
        writer.close(ok)
    return index
