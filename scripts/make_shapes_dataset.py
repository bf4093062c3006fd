"""Write a synthetic "shapes" text-to-video dataset in SAT's layout (videos/*.mp4 + labels/*.txt + dataset.json).

    python scripts/make_shapes_dataset.py outputs/shapes --num-clips 2000 --seed 0

Each clip is one solid shape (circle, square, triangle) of one colour sliding left, right, up or down over a plain
muted background, captioned e.g. "a red circle moving left". The same arguments always give byte-identical files;
the held-out (colour, shape, direction) combinations listed in dataset.json never appear.
"""

from __future__ import annotations

import argparse
import sys


class _OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _at_least(low: int):
    """An argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="make_shapes_dataset.py",
        description=__doc__.split("\n\n")[0],
        epilog="Captions: plain 'a <colour> <shape> moving <direction>' or, with --paraphrase-p, a paraphrase "
        "('a small blue square slides up', 'a green triangle moves to the right').",
    )
    parser.add_argument("out", help="folder to write (created); refused if it already holds a dataset")
    parser.add_argument("--num-clips", type=_at_least(1), default=1000, help="clips to write (default 1000)")
    parser.add_argument("--seed", type=_at_least(0), default=0, help="seed: the same seed gives the same files")
    parser.add_argument("--frames", type=_at_least(2), default=9, help="frames per clip (default 9 = 8k+1)")
    parser.add_argument(
        "--size",
        nargs=2,
        type=_at_least(16),
        metavar=("H", "W"),
        default=(64, 64),
        help="frame height and width in pixels, even (default 64 64)",
    )
    parser.add_argument("--fps", type=_at_least(1), default=8, help="frames per second of the MP4 files (default 8)")
    parser.add_argument(
        "--paraphrase-p", type=float, default=0.3, help="probability of a paraphrased caption (default 0.3)"
    )
    parser.add_argument(
        "--placement",
        choices=("anywhere", "centred", "fixed"),
        default="anywhere",
        help="where a path lies: anywhere in the frame (default), centred (its middle near the frame's centre), or "
        "fixed by the caption (centred, one speed, one size unless the caption says small or large: the shapes recipe)",
    )
    parser.add_argument("--workers", type=_at_least(1), default=1, help="clips encoded side by side (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, write the dataset, print where and how many; a CogvidError is one line and exit status 2."""
    args = _parser().parse_args(argv)
    from cogvid.shapes.dataset import write_dataset  # after parsing: --help stays instant
    from cogvid.utils.errors import CogvidError

    try:
        summary = write_dataset(
            args.out,
            args.num_clips,
            args.seed,
            frames=args.frames,
            height=args.size[0],
            width=args.size[1],
            fps=args.fps,
            paraphrase_p=args.paraphrase_p,
            overwrite=args.overwrite,
            progress=not args.quiet,
            workers=args.workers,
            placement=args.placement,
        )
    except CogvidError as ex:
        print(f"make_shapes_dataset.py: error: {ex}", file=sys.stderr)
        return 2
    print(f"wrote {summary.num_clips} clips to {summary.out} (videos/, labels/, dataset.json)")
    print(f"held out {len(summary.held_out)} combinations: " + ", ".join(" ".join(t) for t in summary.held_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
