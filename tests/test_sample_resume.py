"""infer.resume=true: a killed prompts-file run, run again into the same folder, makes only the videos that are missing
and ends with the same bytes as a run that was never interrupted; a video made with other settings is not taken as
done (cogvid.inference.plan.settings_hash)."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

from test_crash_safety import digest, finished, run

import cogvid
from cogvid.inference.outputs import finished_videos
from cogvid.inference.plan import plan_sample, settings_hash

KILLED = -signal.SIGKILL
PROMPTS = ["a red circle moving right", "a green square moving up", "a blue triangle moving left"]
SAMPLE = ["model=shapes", "sampler.num_steps=2", "device=cpu", "infer.save_latents=true"]


def _media(samples: Path) -> dict[str, str]:
    """File name -> hash of every MP4 and latents file under a final name."""
    return {p.name: digest(p) for p in finished(samples) if p.suffix in (".mp4", ".safetensors")}


def _without_run_details(sidecar: Path) -> dict:
    """A sidecar less what differs between two runs of the same videos (timings, the command line's overrides and
    the whole config's hash, which holds infer.resume)."""
    meta = json.loads(sidecar.read_text())
    return {k: v for k, v in meta.items() if k not in ("timings", "overrides", "config_hash")}


def test_a_killed_run_resumes_into_the_bytes_of_an_uninterrupted_one(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = [*SAMPLE, f"infer.prompts_file={prompts}"]
    clean = tmp_path / "clean"
    code, log, events = run("never", 0, "cogvid-sample", *common, f"infer.output_dir={clean}", cwd=tmp_path)
    assert code == 0, log
    expected = _media(clean / "samples")
    assert len(expected) == 2 * len(PROMPTS)

    # Kill at a random file event (a write, an fsync, a link or a rename; Hydra's own files too) of a whole run, drawn
    # from the events the clean run met: it may land inside a video or between two. Then resume.
    out = tmp_path / "resumed"
    args = [*common, f"infer.output_dir={out}", "infer.resume=true"]
    n = random.Random(7).randint(1, events["any"] - 1)
    code, log, _ = run("any", n, "cogvid-sample", *args, cwd=tmp_path)
    assert code == KILLED, log[-2000:]
    code, log, _ = run("never", 0, "cogvid-sample", *args, cwd=tmp_path)
    assert code == 0, log
    assert _media(out / "samples") == expected  # the same names, the same bytes, each video once
    for sidecar in sorted((clean / "samples").glob("*.json")):
        assert _without_run_details(out / "samples" / sidecar.name) == _without_run_details(sidecar)

    # A finished run resumed again has nothing to make.
    cfg = cogvid.compose(args)
    assert (plan_sample(cfg).skipped, plan_sample(cfg).videos) == (len(PROMPTS), ())


def test_resume_skips_only_videos_of_the_same_prompt_seed_and_settings(tmp_path):
    out = tmp_path / "out"
    samples = out / "samples"
    samples.mkdir(parents=True)
    cfg = cogvid.compose(
        [
            *SAMPLE,
            f"infer.prompt={PROMPTS[0]}",
            "infer.num_videos_per_prompt=2",
            f"infer.output_dir={out}",
            "infer.resume=true",
        ]
    )
    key = settings_hash(cfg)
    (samples / "0000_a.mp4").write_bytes(b"video")
    (samples / "0000_a.json").write_text(
        json.dumps({"prompt": PROMPTS[0], "image": None, "seed": 42, "index": 0, "settings_hash": key})
    )
    (samples / "0001_b.json").write_text(
        json.dumps({"prompt": PROMPTS[0], "image": None, "seed": 43, "index": 1, "settings_hash": key})
    )  # no MP4 beside it: not finished
    (samples / "0002_c.json").write_text("{not json")
    assert finished_videos(samples, key) == {(PROMPTS[0], None, 42): 0}

    plan = plan_sample(cfg)
    assert (plan.skipped, [v.seed for v in plan.videos]) == (1, [43])
    # The seed, the prompt source and the output folder are not settings; the steps are.
    assert settings_hash(cogvid.compose([*SAMPLE, "infer.prompt=other", "infer.seed=1"])) == key
    other = cogvid.compose(
        [
            *SAMPLE[:1],
            "sampler.num_steps=3",
            *SAMPLE[2:],
            f"infer.prompt={PROMPTS[0]}",
            "infer.num_videos_per_prompt=2",
            f"infer.output_dir={out}",
            "infer.resume=true",
        ]
    )
    assert settings_hash(other) != key and plan_sample(other).skipped == 0
