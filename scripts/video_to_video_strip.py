"""The README's video-to-video picture: a shapes clip, and what the shipped shapes model makes of it.

    .venv/bin/python scripts/video_to_video_strip.py        # -> docs/shapes/red_circle_moving_right.mp4 + _v2v.png

Writes the source clip (a red circle sliding right over a light background), samples it with
`cogvid-sample model=shapes infer.video=<clip> infer.prompt="a blue circle moving right"` at each strength
(run_sample, the work of cogvid-sample; seed 42, the default) and stacks the frame strips of the source and of every
result into one PNG, each under its strength.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cogvid.config.compose import compose
from cogvid.inference.frame_strip import frame_strip
from cogvid.inference.run import run_sample
from cogvid.shapes.dataset import ShapeClip, render_clip
from cogvid.utils.media import read_mp4, write_mp4

DOCS = Path(__file__).resolve().parents[1] / "docs" / "shapes"
SOURCE = ShapeClip("red", "circle", "right", size=0.3, speed=0.5, start=(0.3, 0.5), background=(200, 190, 160))
PROMPT = "a blue circle moving right"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.6, 1.0])
    parser.add_argument("--out", type=Path, default=DOCS / "red_circle_moving_right_v2v.png")
    args = parser.parse_args()

    clip = DOCS / "red_circle_moving_right.mp4"
    write_mp4(clip, render_clip(SOURCE), fps=8)
    rows = [frame_strip(read_mp4(clip), f"source: docs/shapes/{clip.name}")]
    with tempfile.TemporaryDirectory() as tmp:
        for strength in args.strengths:
            out = Path(tmp) / str(strength)
            cfg = compose(
                ["model=shapes", f"infer.video={clip}", f"infer.strength={strength}", f"infer.prompt={PROMPT}"]
                + [f"infer.output_dir={out}"]
            )
            video = next(f for f in run_sample(cfg) if f.suffix == ".mp4")
            same = " (= text to video, same seed)" if strength == 1 else ""
            rows.append(frame_strip(read_mp4(video), f'infer.strength={strength:g} infer.prompt="{PROMPT}"{same}'))
    Image.fromarray(np.concatenate(rows)).save(args.out, optimize=True)
    print(f"wrote {clip} and {args.out}")


if __name__ == "__main__":
    main()
