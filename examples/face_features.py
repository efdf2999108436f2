"""The face-mesh features of one clip, drawn: an overlay frame and the pose and expression curves.

    python examples/face_features.py                    # the moving astronaut (scikit-image)
    python examples/face_features.py VIDEO --out DIR    # a video of your own

Writes DIR/face-overlay.png (one sampled frame as `selfmm extract --overlay` draws it) and
DIR/face-curves.png (head pose and expression geometry over the clip), the two pictures of
docs/extraction.md (DIR defaults to docs/images). Needs the `video` extra; without VIDEO also
scikit-image, whose astronaut photo tests/media.py moves, scales and turns along a path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from selfmm.extract import VISUAL_SETS, extract_media  # noqa: E402
from selfmm.extract.media import decode  # noqa: E402
from selfmm.extract.overlay import draw_frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = VISUAL_SETS["mesh"].columns


def astronaut_clip(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from media import moving_face, write_frames

    frames, _ = moving_face(384, 288, n=40)
    return write_frames(folder / "astronaut.mp4", frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", nargs="?", help="a video (default: the moving astronaut)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for the two PNGs")
    parser.add_argument("--frame", type=float, default=0.5, help="where the overlay frame is, 0-1 (default 0.5)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        video = Path(args.video) if args.video else astronaut_clip(Path(work))
        media = extract_media(video, visual_features="mesh")
        mesh = VISUAL_SETS["mesh"]
        decoded = decode(video, mesh.fps, frame_format=mesh.frame_format, frame_width=mesh.frame_width)
    if media.faces is None or not media.vision.shape[0]:
        print(f"{video}: no face found", file=sys.stderr)
        return 1
    rows = media.vision
    times = np.asarray(decoded.times[:len(rows)])

    # The overlay frame: the sampled frame closest to --frame of the clip.
    index = min(len(rows) - 1, round(args.frame * (len(rows) - 1)))
    picture = draw_frame(decoded.frames[index], media.faces.faces[index], times[index], None)
    # 256 colours keep the PNG small (Pillow comes with matplotlib).
    Image.fromarray(picture).quantize(256).save(out / "face-overlay.png", optimize=True)

    def col(name: str) -> np.ndarray:
        return rows[:, COLUMNS.index(name)]

    fig, (pose, face) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for name in ("head_yaw", "head_pitch", "head_roll"):
        pose.plot(times, col(name), label=name)
    pose.set_ylabel("degrees")
    pose.legend(loc="upper right", fontsize=8)
    for name in ("mouth_open", "mouth_width", "lip_corner_left", "eye_open_left", "eye_open_right", "brow_left"):
        face.plot(times, col(name), label=name)
    face.set_ylabel("inter-ocular distances")
    face.set_xlabel("seconds")
    face.legend(loc="upper right", fontsize=8, ncol=2)
    pose.set_title(f"{Path(video).name if args.video else 'the moving astronaut'}: mesh features, "
                   f"{len(rows)} frames at {mesh.fps:g} per second", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "face-curves.png", dpi=80)
    print(f"{out / 'face-overlay.png'}, {out / 'face-curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
