"""Training clips: SAT's folder layout or a CSV/JSONL manifest, read and cut as SAT's SFTDataset does (`data_video.py`).

Every item is addressed by a (dataset index, batch position) key that `StepBatchSampler` yields, so the whole data
stream, and the randomness a training step draws, is a function of the step alone: a resumed run sees exactly the
batches the interrupted one would have. A video that cannot be read or is too short is replaced, deterministically,
by the next readable one; the replacement is reported in the item (`skipped`) so the training loop counts and logs it.
"""

from __future__ import annotations

import csv
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from cogvid.inference.video_shape import size_multiple, vae_spatial
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4",)


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str


@dataclass(frozen=True)
class ClipSpec:
    """How a video becomes a training clip: size, rate, length (SAT video_size, fps, max_num_frames, skip_frms_num)."""

    height: int
    width: int
    fps: int
    num_frames: int
    skip_frms_num: int
    min_num_frames: int


def clip_spec(cfg) -> ClipSpec:
    """From `cfg.data` and the model (video_size defaults to the latent grid in pixels, num_frames to
    model.num_frames)."""
    d, m = cfg.data, cfg.model
    spatial, step = vae_spatial(m), size_multiple(m)
    height, width = d.video_size if d.video_size else (m.latent_height * spatial, m.latent_width * spatial)
    num_frames = d.max_num_frames or m.num_frames
    if (num_frames - 1) % m.time_compressed_rate:
        raise CogvidError(f"data.max_num_frames={num_frames} must be {m.time_compressed_rate}k+1 (e.g. 49, 81)")
    if height % step or width % step:
        raise CogvidError(f"data.video_size=[{height}, {width}] must be multiples of {step}")
    return ClipSpec(int(height), int(width), int(d.fps), int(num_frames), int(d.skip_frms_num), int(d.min_num_frames))


# --- where the clips are ---------------------------------------------------------------------------------------


def sat_layout_clips(root: str | Path) -> tuple[list[Clip], list[Path]]:
    """(clips, videos without a caption) for SAT's layout: `root/**/videos/x.mp4` with `root/**/labels/x.txt`.

    As SAT: the caption file is the video path with `.mp4` -> `.txt` and `videos` -> `labels` (here only the folder
    named `videos`, not every occurrence of the word), first line. A missing or empty caption is not trained on as ""
    (SAT would) but skipped and reported.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CogvidError(f"data.root={root}: no such folder (expected {root}/videos/*.mp4 and {root}/labels/*.txt)")
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise CogvidError(f"data.root={root} holds no .mp4 video (expected {root}/videos/*.mp4 + {root}/labels/*.txt)")
    clips, uncaptioned = [], []
    for video in videos:
        parts = list(video.relative_to(root).parts)
        parts = ["labels" if p == "videos" else p for p in parts[:-1]] + [video.with_suffix(".txt").name]
        caption = _first_line(root.joinpath(*parts))
        if caption:
            clips.append(Clip(video, caption))
        else:
            uncaptioned.append(video)
    return clips, uncaptioned


def _first_line(path: Path) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text.splitlines()[0].strip() if text else ""


def _manifest_rows(manifest: Path) -> list[dict]:
    """The entries of a JSONL or CSV manifest (UnicodeDecodeError for bytes that are not UTF-8)."""
    rows: list[dict] = []
    if manifest.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as ex:
                raise CogvidError(f"data.manifest={manifest}: line {n} is not JSON ({ex.msg})") from ex
            if not isinstance(row, dict):
                raise CogvidError(f"data.manifest={manifest}: line {n} is not a JSON object")
            rows.append(row)
    else:
        with open(manifest, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise CogvidError(
                    f"data.manifest={manifest}: a CSV manifest needs a header with `path` and `caption` columns "
                    f"(found {reader.fieldnames})"
                )
            rows = list(reader)
    return rows


def manifest_clips(manifest: str | Path) -> tuple[list[Clip], list[Path]]:
    """(clips, videos without a caption) from a CSV (header with `path` and `caption`) or JSONL manifest.

    Relative paths are relative to the manifest's folder.
    """
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise CogvidError(f"data.manifest={manifest}: no such file")
    try:
        rows = _manifest_rows(manifest)
    except UnicodeDecodeError as ex:
        raise CogvidError(f"data.manifest={manifest} is not UTF-8 text (byte {ex.start}: {ex.reason})") from None
    clips, uncaptioned = [], []
    for n, row in enumerate(rows, start=1):
        if not row.get("path"):
            raise CogvidError(f"data.manifest={manifest}: entry {n} has no `path`")
        path = Path(str(row["path"])).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        caption = str(row.get("caption") or "").strip()
        if caption:
            clips.append(Clip(path, caption))
        else:
            uncaptioned.append(path)
    return clips, uncaptioned


def find_clips(cfg) -> list[Clip]:
    """The clips of `data.root` or `data.manifest`; uncaptioned ones are skipped with one warning; none is an error."""
    d = cfg.data
    if bool(d.root) == bool(d.manifest):
        raise CogvidError(
            "give exactly one of data.root (SAT layout: videos/*.mp4 + labels/*.txt) and data.manifest (CSV/JSONL)"
        )
    clips, uncaptioned = sat_layout_clips(d.root) if d.root else manifest_clips(d.manifest)
    source = f"data.root={d.root}" if d.root else f"data.manifest={d.manifest}"
    if uncaptioned:
        log.warning(
            "%s: skipped %d of %d videos without a caption (first: %s)",
            source,
            len(uncaptioned),
            len(uncaptioned) + len(clips),
            uncaptioned[0],
        )
    if not clips:
        raise CogvidError(
            f"{source}: no video has a caption ({len(uncaptioned)} videos, none with a non-empty caption; SAT layout: "
            "labels/x.txt beside videos/x.mp4)"
        )
    return clips


# --- reading one video ------------------------------------------------------------------------------------------


class BadVideo(Exception):
    """A video that cannot be used: unreadable, or too short."""


def _av_errors(av) -> tuple[type[Exception], ...]:
    """What PyAV raises on a missing, unreadable or corrupt file: its FFmpegError family (most of which are also
    OSError or ValueError), and the plain Python errors of an odd container."""
    return (av.error.FFmpegError, OSError, RuntimeError, ValueError, EOFError, MemoryError)


def _bad(ex: Exception) -> BadVideo:
    return BadVideo(" ".join(str(ex).split())[:160] or type(ex).__name__)


def probe(path: Path) -> tuple[int, float]:
    """(frame count, frames per second) of a video, from its container without decoding it.

    The count is the container's when it states one, else the video packets counted by demuxing (no decoding).
    """
    import av

    if not path.is_file():
        raise BadVideo("no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadVideo("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            n = stream.frames
            if n <= 0:
                n = sum(1 for packet in container.demux(stream) if packet.size)
    except _av_errors(av) as ex:
        raise _bad(ex) from ex
    if n <= 0 or fps <= 0:
        raise BadVideo(f"no frames (count {n}, fps {fps})")
    return int(n), fps


def frame_indices(n: int, fps_src: float, spec: ClipSpec) -> list[int]:
    """Which source frames make the clip, SAT's three cases (`SFTDataset`), with its crashes (stride 0, too short)
    guarded.

    1. longer than max_num_frames at the target rate: resample by an integer stride fps_src / fps (>= 1),
       starting after skip_frms_num;
    2. more frames than max_num_frames: skip at both ends, stride (remaining // max) >= 1;
    3. otherwise: skip at both ends and keep the longest 4k+1 prefix (padded later by repeating the last frame).
    """
    num, skip = spec.num_frames, spec.skip_frms_num
    if n / fps_src * spec.fps > num:
        start = int(skip)
        # A source slower than the target rate gets stride 1 over `num` frames (SAT: stride 0, a crash).
        end = min(max(int(start + num / spec.fps * fps_src), start + num), n)
        stride = max((end - start) // num, 1)
        return list(range(start, end, stride))[:num]
    if n > num:
        start, end = skip, n - skip
        stride = max((end - start) // num, 1)
        return list(range(start, end, stride))[:num]
    start, end = skip, n - skip
    available = end - start
    if available < max(spec.min_num_frames, 1):
        raise BadVideo(f"too short: {n} frames, {max(available, 0)} after skipping {skip} at each end")
    keep = (available - 1) // 4 * 4 + 1  # the largest 4k+1 <= available
    return list(range(start, start + keep))


def read_frames(path: Path, indices: list[int]) -> np.ndarray:
    """The frames at `indices` (ascending, repeats allowed) as (f, h, w, 3) uint8, decoding only up to the last."""
    import av

    wanted = set(indices)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadVideo("no video stream")
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                decoded = i + 1
                if i in wanted:
                    # threads=1: swscale's slice threads (its default, one per CPU) live as long as the frame does,
                    # and a process forked beside them (DataLoader workers, forked writers) was seen to hang in
                    # swscale's thread-pool teardown; one frame of a clip converts in well under a millisecond
                    got[i] = frame.to_ndarray(format="rgb24", threads=1)
                if i >= last:
                    break
    except _av_errors(av) as ex:
        raise _bad(ex) from ex
    missing = [i for i in sorted(wanted) if i not in got]
    if missing:
        raise BadVideo(f"ends early: frame {missing[0]} of the {decoded} decoded is missing")
    return np.stack([got[i] for i in indices])


def resize_cover_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(f, 3, h, w) uint8 -> (f, 3, height, width) float in [0, 255]: bicubic resize so the frame covers the target,
    keeping its aspect, then a centre crop (SAT resize_for_rectangle_crop, reshape_mode="center"; the v1.0 I2V image
    is cut the same way)."""
    h, w = frames.shape[-2:]
    if w / h > width / height:
        size = (height, int(w * height / h))
    else:
        size = (int(h * width / w), width)
    x = frames.float()
    if tuple(size) != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255)  # torchvision's uint8 resize rounds and saturates
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def load_clip(path: Path, spec: ClipSpec, probed: tuple[int, float] | None = None) -> tuple[torch.Tensor, int]:
    """(clip (num_frames, 3, H, W) float in [-1, 1], frames read before padding) or BadVideo.

    `probed`: the video's (frame count, fps) if already known.
    """
    n, fps_src = probed or probe(path)
    indices = frame_indices(n, fps_src, spec)
    if len(indices) < spec.min_num_frames:
        raise BadVideo(f"too short: {len(indices)} usable frames, data.min_num_frames={spec.min_num_frames}")
    frames = torch.from_numpy(read_frames(path, indices)).permute(0, 3, 1, 2)  # (f, 3, h, w)
    read = frames.shape[0]
    if read < spec.num_frames:  # SAT pads by repeating the last frame
        frames = torch.cat([frames, frames[-1:].expand(spec.num_frames - read, -1, -1, -1)])
    frames = frames[: spec.num_frames]
    clip = resize_cover_center_crop(frames, spec.height, spec.width)
    return (clip - 127.5) / 127.5, read


# --- datasets ---------------------------------------------------------------------------------------------------


class VideoClips(Dataset):
    """Clips decoded on the fly: item {"video": (F, 3, H, W) in [-1, 1], "caption", "batch_pos", "skipped"}."""

    def __init__(self, clips: list[Clip], spec: ClipSpec):
        self.clips, self.spec = clips, spec
        # Per worker process: a bad file is read once, a good one probed once.
        self._bad: dict[int, str] = {}
        self._probed: dict[int, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, index: int):
        """(clip, caption, skipped [(path, reason)]) for `index`, or for the next readable clip after it."""
        skipped = []
        for k in range(len(self.clips)):
            i = (index + k) % len(self.clips)
            clip = self.clips[i]
            if i not in self._bad:
                try:
                    if i not in self._probed:
                        self._probed[i] = probe(clip.path)
                    video, _ = load_clip(clip.path, self.spec, self._probed[i])
                    return video, clip.caption, skipped
                except BadVideo as ex:
                    self._bad[i] = str(ex)
            skipped.append((str(clip.path), self._bad[i]))
        raise CogvidError(f"none of the {len(self.clips)} videos is readable (first: {skipped[0][0]}: {skipped[0][1]})")

    def check_readable(self) -> None:
        """Decode clips until one gives enough frames, before any training starts; one line if none does."""
        if not self.clips:
            raise CogvidError("no videos to train on")
        self.load(0)

    def __getitem__(self, key):
        index, batch_pos = key
        video, caption, skipped = self.load(index)
        return {"video": video, "caption": caption, "batch_pos": batch_pos, "skipped": skipped}


class ClipsInMemory(Dataset):
    """The clips of a `VideoClips`, each decoded once up front and kept as uint8 (n, F, 3, H, W): for small clips read
    for many epochs (the VAE's). Items as `VideoClips`' (an unusable video is replaced as there)."""

    def __init__(self, clips: VideoClips, threads: int = 4, progress: bool = True):
        def load(index: int) -> tuple[torch.Tensor, str, list]:
            video, caption, skipped = clips.load(index)  # (F, 3, H, W) in [-1, 1], exactly (u - 127.5) / 127.5
            return (video * 127.5 + 127.5).round().to(torch.uint8), caption, skipped

        bar = tqdm(total=len(clips), desc="decoding clips", unit="clip", leave=False, disable=not progress)
        with bar, ThreadPoolExecutor(max_workers=threads) as pool:  # PyAV decodes without holding the GIL
            loaded = []
            for item in pool.map(load, range(len(clips))):
                loaded.append(item)
                bar.update()
        self.videos = torch.stack([video for video, _, _ in loaded])  # (n, F, 3, H, W) uint8
        self.captions = [caption for _, caption, _ in loaded]
        self.skipped = [skipped for _, _, skipped in loaded]
        log.info("%d clips in memory: %.1f MB", len(self), self.videos.numel() / 1e6)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, key):
        index, batch_pos = key
        video = (self.videos[index].float() - 127.5) / 127.5  # (F, 3, H, W) in [-1, 1]
        return {"video": video, "caption": self.captions[index], "batch_pos": batch_pos, "skipped": self.skipped[index]}


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings and skip reports as lists; `batch_pos` becomes one int."""
    batch: dict = {"batch_pos": int(items[0]["batch_pos"]), "skipped": [s for it in items for s in it["skipped"]]}
    for key in items[0]:
        if key in batch:
            continue
        values = [it[key] for it in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


class StepBatchSampler(Sampler):
    """Batches as a function of the global batch position: an endless stream of reshuffled epochs.

    Global batch b holds stream items [b B W, (b + 1) B W) (B per rank, W ranks); rank r takes its B consecutive
    ones. Stream item p is `perm_e[p mod n]` with e = p // n and perm_e a permutation seeded by (seed, e). Starting at
    `start` (the number of batches already trained) reproduces the interrupted stream exactly. Yields
    [(index, b), ...] keys.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int, start: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def batch(self, b: int) -> list[tuple[int, int]]:
        first = (b * self.world_size + self.rank) * self.batch_size
        return [(int(self._perm(p // self.n)[p % self.n]), b) for p in range(first, first + self.batch_size)]

    def __iter__(self):
        b = self.start
        while True:
            yield self.batch(b)
            b += 1


def step_generator(seed: int, rank: int, batch_pos: int) -> torch.Generator:
    """A CPU generator for everything one training step draws, keyed by (seed, rank, batch position)."""
    state = np.random.SeedSequence([seed, rank, batch_pos]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def latent_frames(num_frames: int, time_compressed_rate: int) -> int:
    return (num_frames - 1) // time_compressed_rate + 1
