"""The PNG frame strip: every picked frame appears, enlarged without new colours, under the caption."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cogvid.inference.frame_strip import CAPTION_HEIGHT, GAP, frame_strip, strip_frames, write_frame_strip


def _frames(n: int, h: int = 64, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("n", "most", "expected"), [(9, 9, list(range(9))), (49, 5, [0, 12, 24, 36, 48]), (1, 9, [0])])
def test_strip_frames_spread_from_first_to_last(n, most, expected):
    assert strip_frames(n, most) == expected


def test_every_frame_is_in_the_strip_enlarged_by_nearest_neighbour(tmp_path):
    frames = _frames(9)
    picture = frame_strip(frames, "a red circle moving right")
    scale = 2  # 64 rows -> at least 128
    h, w = 64 * scale, 48 * scale
    assert picture.shape == (CAPTION_HEIGHT + h + GAP, GAP + 9 * (w + GAP), 3)
    for k in range(9):
        x = GAP + k * (w + GAP)
        cell = picture[CAPTION_HEIGHT : CAPTION_HEIGHT + h, x : x + w]
        np.testing.assert_array_equal(cell[::scale, ::scale], frames[k])
    caption_band = picture[:CAPTION_HEIGHT]
    assert (caption_band < 128).any() and (caption_band == 255).mean() > 0.5  # dark text on white

    path = write_frame_strip(tmp_path / "strip.png", frames, "a red circle moving right")
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), picture)
    assert [p.name for p in tmp_path.iterdir()] == ["strip.png"]  # no temp file left


def test_without_a_caption_and_for_large_frames():
    frames = _frames(3, 160, 160)
    picture = frame_strip(frames)
    assert picture.shape == (GAP + 160 + GAP, GAP + 3 * (160 + GAP), 3)  # not enlarged, no caption band
    np.testing.assert_array_equal(picture[GAP : GAP + 160, GAP : GAP + 160], frames[0])


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        frame_strip(np.zeros((2, 8, 8, 3), dtype=np.float32))
