"""Bad input through the real entry points, as a user meets it: every case runs an installed command
(cogvid-sample, cogvid-train, cogvid-export) in a subprocess, in its own empty working dir, and must give exit code 2,
exactly one line on stderr (`PROG: error: ...`, holding the case's fragment), no traceback anywhere, and write
nothing: the working dir stays empty (no Hydra `outputs/`), the case's inputs stay byte for byte as they were, and
the shared weights (tests/fixtures, cogvid/weights/shapes) are untouched.

The cases run two at a time in threads (one subprocess each) in a module fixture; each is then its own test, named
`test_refused[<command>-<case>]`, which reports the command line and what went wrong.
"""

from __future__ import annotations

import hashlib
import random
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FIXTURE, TIMEOUT, run_cli

SHAPES_WEIGHTS = Path(__file__).resolve().parents[1] / "cogvid" / "weights" / "shapes"
SHARED_INPUTS = (FIXTURE, SHAPES_WEIGHTS)  # read by many cases at once: stat-checked per case, hashed per run
WORKERS = 2

JUNK = random.Random(0).randbytes(4096)  # random bytes, given where a checkpoint, image, video or YAML belongs
NOT_UTF8 = b"a red circle moving right\nun caf\xe9 au lait\n"
DIR = None  # an `inputs` value: make a folder


@dataclass(frozen=True)
class Case:
    """One refused command line. `{in}` in an argument is the case's own input dir (made from `inputs`: relative
    path -> bytes, or DIR for a folder), `{fixture}` the tiny SAT checkpoint fixture."""

    id: str
    prog: str
    args: tuple[str, ...]
    expect: str  # a fragment of the one error line: the case is refused for its own reason
    inputs: dict[str, bytes | None] = field(default_factory=dict)
    stdin: bytes | None = None
    env: dict[str, str] | None = None


def sample(name: str, *args: str, expect: str, **kwargs) -> Case:
    """cogvid-sample on the shipped shapes model, one prompt."""
    base = ("model=shapes", "infer.prompt=a red circle moving right")
    return Case(f"sample-{name}", "cogvid-sample", (*base, *args), expect, **kwargs)


def train(name: str, *args: str, expect: str, **kwargs) -> Case:
    """cogvid-train on the shapes model; args name the task and the data."""
    return Case(f"train-{name}", "cogvid-train", ("model=shapes", *args), expect, **kwargs)


def export(name: str, *args: str, expect: str, **kwargs) -> Case:
    return Case(f"export-{name}", "cogvid-export", args, expect, **kwargs)


TINY_DIT = "model.ckpt={fixture}/dit_ckpt"
TINY_LORA = "{fixture}/lora_ckpt"
TINY_VAE = "model.vae_ckpt={fixture}/vae/3d-vae.pt"
A_FILE = {"a_file": b"not a folder\n"}
CLIPS = {"data/videos/noise.mp4": JUNK, "data/videos/empty.mp4": b"", "data/labels/noise.txt": b"a red circle\n"}
CLIPS |= {"data/labels/empty.txt": b"a blue square\n"}
TRAIN_TASKS = {  # each task with what it requires; the value checks refuse before the data is looked at
    "fit": ("task=fit", "data.root=/nonexistent/data"),
    "vae": ("task=vae", "data.root=/nonexistent/data"),
    "precompute": ("task=precompute", "data.root=/nonexistent/data", "data.cache={in}/cache"),
}

I2V = ("model=5b_i2v", "infer.prompt=a fox")  # image-to-video: its images are checked before any weight
PROMPTS_FILE = ("model=shapes", "infer.prompts_file={in}/prompts.txt")
# The shapes model loads (its T5's weights with a progress bar of transformers') before standard input is read.
LOADS_BEFORE_STDIN = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}

# The shipped shapes T5 (config.json, spiece.model, model.safetensors) copied into a case's inputs, one file damaged.
SHAPES_T5 = {f"t5/{p.name}": p.read_bytes() for p in sorted((SHAPES_WEIGHTS / "t5").iterdir())}
T5_PATH = "model.text_encoder.path={in}/t5"


def damaged_t5(name: str, change) -> dict[str, bytes]:
    """The shapes T5 with `t5/name` replaced by change(its bytes)."""
    return {**SHAPES_T5, f"t5/{name}": change(SHAPES_T5[f"t5/{name}"])}


T5_CASES = [  # (name, file, change, expect): through cogvid-sample; the last one through cogvid-export too
    ("t5-config-not-json", "config.json", lambda b: b"{not json", "config.json is damaged: it is not valid JSON"),
    ("t5-spiece-damaged", "spiece.model", lambda b: b[:1000], "spiece.model is damaged"),
    ("t5-weights-truncated", "model.safetensors", lambda b: b[: len(b) // 2], "model.safetensors is truncated"),
    ("t5-other-width", "config.json", lambda b: b.replace(b'"d_model": 64', b'"d_model": 32'), "width d_model=32"),
]

SAMPLE_CASES = [
    # misspelt keys, unknown configs, wrong types, command lines Hydra cannot parse
    sample("misspelt-model-key", "model.hiden_size=3", expect="Key 'hiden_size' not in 'ModelConfig'"),
    sample("misspelt-infer-key", "infer.promt=a fox", expect="Key 'promt' not in 'InferConfig'"),
    sample("misspelt-sampler-key", "sampler.num_step=3", expect="Key 'num_step' not in 'SamplerConfig'"),
    sample("misspelt-top-level-key", "dtyp=fp32", expect="Key 'dtyp' not in 'SampleConfig'"),
    sample("unknown-model", "model=7b", expect="model/7b"),
    sample("unknown-sampler", "sampler=unipc", expect="sampler/unipc"),
    sample("unknown-mode", "mode=qlora", expect="mode/qlora"),
    sample(
        "frames-not-a-number", "infer.num_frames=nine", expect="'nine' of type 'str' could not be converted to Integer"
    ),
    sample("seed-not-an-integer", "infer.seed=1.5", expect="'1.5' of type 'float' could not be converted to Integer"),
    sample(
        "guidance-not-a-number",
        "sampler.guidance_scale=lots",
        expect="'lots' of type 'str' could not be converted to Float",
    ),
    sample("bool-not-a-bool", "infer.save_latents=maybe", expect="'maybe' is not a valid bool"),
    sample("dtype-unknown", "dtype=fp8", expect="Invalid value 'fp8', expected one of [fp32, fp16, bf16]"),
    sample("solver-unknown", "sampler.solver=unipc", expect="Invalid value 'unipc', expected one of"),
    sample("tile-not-a-list", "infer.vae_tile=big", expect="infer.vae_tile=big must be auto, off or [h, w]"),
    sample("unquoted-value", "infer.image=the fox's photo.png", expect="must be quoted"),
    sample("not-key-value", "shapes", expect="cannot parse the override 'shapes': an override is key=value"),
    sample("unknown-flag", "--fast", expect="unrecognized arguments: --fast"),
    sample("flag-after-overrides", "-m", "infer.seed=1,2", expect="flags such as -m go before the overrides"),
    Case("sample-two-modes", "cogvid-sample", ("-m", "--cfg", "job", "model=shapes"), expect="only one of --run"),
    sample("interpolation-to-nothing", "model.ckpt=${{nowhere}}", expect="'nowhere' not found (at model.ckpt)"),
    # out-of-range numbers
    sample("seed-negative", "infer.seed=-1", expect="infer.seed=-1 must be an integer in [0, 2**63 - 1]"),
    sample("seed-past-int64", "infer.seed=9223372036854775808", expect="infer.seed=9223372036854775808 must be"),
    sample("frames-not-8k+1", "infer.num_frames=10", expect="infer.num_frames=10"),
    sample("height-not-multiple-of-16", "infer.height=50", expect="infer.height=50"),
    sample("guidance-nan", "sampler.guidance_scale=nan", expect="sampler.guidance_scale=nan must be a finite"),
    sample("guidance-inf", "sampler.guidance_scale=inf", expect="sampler.guidance_scale=inf must be a finite"),
    sample("guidance-minus-inf", "sampler.guidance_scale=-inf", expect="sampler.guidance_scale=-inf must be"),
    sample("steps-zero", "sampler.num_steps=0", expect="sampler.num_steps=0 must be >= 1"),
    sample("steps-negative", "sampler.num_steps=-3", expect="sampler.num_steps=-3 must be >= 1"),
    sample("dynamic-steps-zero", "sampler.dynamic_num_steps=0", expect="sampler.dynamic_num_steps=0 must be"),
    sample("vae-tile-zero", "infer.vae_tile=[0,4]", expect="infer.vae_tile=[0, 4] must be"),
    sample("vae-tile-one-number", "infer.vae_tile=[4]", expect="infer.vae_tile=[4] must be"),
    sample("fps-zero", "infer.fps=0", expect="infer.fps=0 must be >= 1"),
    sample("videos-per-prompt-zero", "infer.num_videos_per_prompt=0", expect="infer.num_videos_per_prompt=0"),
    # weights: missing, a folder where a file belongs, junk, empty
    sample("ckpt-missing", "model.ckpt={in}/nowhere", expect="nowhere: no such folder"),
    sample("ckpt-empty-folder", "model.ckpt={in}/empty", expect="latest", inputs={"empty/": DIR}),
    sample(
        "ckpt-junk-pt", "model.ckpt={in}/junk.pt", expect="junk.pt is not a torch checkpoint", inputs={"junk.pt": JUNK}
    ),
    sample("vae-a-folder", "model.vae_ckpt={in}/vae", expect="vae: no such file", inputs={"vae/": DIR}),
    sample(
        "vae-junk",
        "model.vae_ckpt={in}/3d-vae.pt",
        expect="3d-vae.pt is not a torch checkpoint",
        inputs={"3d-vae.pt": JUNK},
    ),
    sample("vae-empty", "model.vae_ckpt={in}/3d-vae.pt", expect="3d-vae.pt is empty", inputs={"3d-vae.pt": b""}),
    sample("t5-missing", "model.text_encoder.path={in}/t5", expect="model.text_encoder.path: no folder at"),
    # LoRA
    sample("lora-rank-negative", "model.lora_rank=-4", expect="model.lora_rank=-4 must be >= 0"),
    sample("lora-mode-rank-zero", "mode=lora", "model.lora_rank=0", expect="mode=lora needs model.lora_rank >= 1"),
    sample("lora-alpha-nan", "mode=lora", "model.lora_alpha=nan", expect="model.lora_alpha=nan must be a finite"),
    sample("lora-ckpt-without-lora-mode", "model.ckpt=" + TINY_LORA, expect="has LoRA adapters"),
    # images, prompt files, standard input
    sample("image-for-text-to-video", "infer.image={in}/a.png", expect="takes no image", inputs={"a.png": JUNK}),
    Case("sample-i2v-without-image", "cogvid-sample", I2V, expect="is image-to-video; give infer.image"),
    Case("sample-i2v-image-missing", "cogvid-sample", (*I2V, "infer.image={in}/a.png"), expect="no image file at"),
    Case(
        "sample-i2v-image-junk",
        "cogvid-sample",
        (*I2V, "infer.image={in}/a.png"),
        expect="a.png is not a readable image",
        inputs={"a.png": JUNK},
    ),
    Case("sample-prompts-file-missing", "cogvid-sample", PROMPTS_FILE, expect="prompts.txt: no such file"),
    Case(
        "sample-prompts-file-a-folder",
        "cogvid-sample",
        PROMPTS_FILE,
        expect="prompts.txt is a folder",
        inputs={"prompts.txt/": DIR},
    ),
    Case(
        "sample-prompts-file-not-utf8",
        "cogvid-sample",
        PROMPTS_FILE,
        expect="prompts.txt is not UTF-8 text",
        inputs={"prompts.txt": NOT_UTF8},
    ),
    Case("sample-no-prompt", "cogvid-sample", ("model=shapes",), expect="give exactly one prompt source"),
    Case(
        "sample-stdin-not-utf8-c-locale",
        "cogvid-sample",
        ("model=shapes", "infer.interactive=true"),
        expect="standard input line 1 is not UTF-8",
        stdin=b"caf\xe9 au lait\n",
        env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", **LOADS_BEFORE_STDIN},
    ),
    # output paths; Hydra's run dir given (new, used, the working dir) or a sweep's
    sample("output-dir-a-file", "infer.output_dir={in}/a_file", expect="infer.output_dir=", inputs=A_FILE),
    sample("output-dir-under-a-file", "infer.output_dir={in}/a_file/out", expect="lies under a file", inputs=A_FILE),
    sample("run-dir-new", "hydra.run.dir={in}/runs/today", "infer.seed=-1", expect="infer.seed=-1"),
    sample(
        "run-dir-used",
        "hydra.run.dir={in}/run",
        "infer.fps=0",
        expect="infer.fps=0",
        inputs={
            "run/notes.txt": b"an earlier run\n",
            "run/.hydra/config.yaml": b"model: {}\n",
            "run/cogvid-sample.log": b"[an earlier run's log]\n",
        },
    ),
    sample("run-dir-cwd", "hydra.run.dir=.", "sampler.num_steps=0", expect="sampler.num_steps=0"),
    Case(
        "sample-sweep",
        "cogvid-sample",
        ("-m", "model=shapes", "infer.prompt=a fox", "infer.seed=-1,2"),
        expect="infer.seed=-1",
    ),
    Case(
        "sample-sweep-dir-given",
        "cogvid-sample",
        ("-m", "model=shapes", "infer.prompt=a fox", "hydra.sweep.dir={in}/sweep", "sampler.guidance_scale=nan,6"),
        expect="sampler.guidance_scale=nan",
    ),
]

TRAIN_CASES = [
    train("misspelt-key", "train.lrr=0.1", expect="Key 'lrr' not in 'TrainConfig'"),
    train("misspelt-data-key", "data.rooot=/data", expect="Key 'rooot' not in 'DataConfig'"),
    train("unknown-strategy", "train=ddpp", expect="train/ddpp"),
    train("unknown-task", "task=finetune", expect="Invalid value 'finetune', expected one of [fit, precompute, vae]"),
    train(
        "steps-not-a-number", "train.max_steps=many", expect="'many' of type 'str' could not be converted to Integer"
    ),
    train("betas-not-a-list", "train.betas=0.9", expect="float is not a ListConfig"),
    train("unknown-flag", "--resume", expect="unrecognized arguments: --resume"),
    *[
        train(f"{task}-{name}", *TRAIN_TASKS[task], override, expect=message)
        for task in ("fit", "vae", "precompute")
        for name, override, message in [
            ("lr-negative", "train.lr=-1", "train.lr=-1.0 must be > 0"),
            ("lr-nan", "train.lr=nan", "train.lr=nan must be a finite number"),
            ("workers-negative", "data.num_workers=-1", "data.num_workers=-1 must be >= 0"),
            ("fps-zero", "data.fps=0", "data.fps=0 must be >= 1"),
        ]
    ],
    train("lr-zero", *TRAIN_TASKS["fit"], "train.lr=0", expect="train.lr=0.0 must be > 0"),
    train("betas-past-one", *TRAIN_TASKS["fit"], "train.betas=[0.9,1.5]", expect="train.betas=[0.9, 1.5]"),
    train("betas-one-number", *TRAIN_TASKS["vae"], "train.betas=[0.9]", expect="train.betas=[0.9]"),
    train("eps-zero", *TRAIN_TASKS["fit"], "train.eps=0", expect="train.eps=0.0 must be > 0"),
    train("weight-decay-negative", *TRAIN_TASKS["vae"], "train.weight_decay=-0.1", expect="train.weight_decay=-0.1"),
    train("gradient-clip-inf", *TRAIN_TASKS["fit"], "train.gradient_clip=inf", expect="train.gradient_clip=inf"),
    train("seed-negative", *TRAIN_TASKS["fit"], "train.seed=-5", expect="train.seed=-5 must be an integer"),
    train("warmup-negative", *TRAIN_TASKS["fit"], "train.warmup_steps=-1", expect="train.warmup_steps=-1"),
    train(
        "validation-seed-negative",
        *TRAIN_TASKS["fit"],
        "train.validation.seeds=[1,-2]",
        expect="train.validation.seeds[1]=-2",
    ),
    train(
        "lora-mode-rank-zero",
        *TRAIN_TASKS["fit"],
        "mode=lora",
        "model.lora_rank=0",
        expect="mode=lora needs model.lora_rank >= 1",
    ),
    train(
        "lora-alpha-inf",
        *TRAIN_TASKS["fit"],
        "mode=lora",
        "model.lora_alpha=inf",
        expect="model.lora_alpha=inf must be a finite",
    ),
    train(
        "output-dir-a-file",
        *TRAIN_TASKS["fit"],
        "train.output_dir={in}/a_file",
        expect="train.output_dir=",
        inputs=A_FILE,
    ),
    train(
        "cache-under-a-file",
        "task=precompute",
        "data.root={in}",
        "data.cache={in}/a_file/cache",
        expect="data.cache=",
        inputs=A_FILE,
    ),
    train("run-dir-new", *TRAIN_TASKS["vae"], "hydra.run.dir={in}/runs/today", "train.lr=-1", expect="train.lr=-1.0"),
    Case(
        "train-sweep",
        "cogvid-train",
        ("-m", "model=shapes", *TRAIN_TASKS["fit"], "train.lr=-1,0.1"),
        expect="train.lr=-1.0",
    ),
    # data and weights: missing, a file where a folder belongs, junk, damaged
    train("fit-data-root-missing", "task=fit", "data.root={in}/data", expect="data: no such folder"),
    train("vae-data-root-a-file", "task=vae", "data.root={in}/a_file", expect="a_file: no such folder", inputs=A_FILE),
    train(
        "precompute-junk-videos",
        "task=precompute",
        "data.root={in}/data",
        "data.cache={in}/cache",
        expect="none of the 2 videos is readable",
        inputs=CLIPS,
    ),
    train(
        "fit-manifest-not-utf8",
        "task=fit",
        "data.manifest={in}/clips.csv",
        expect="is not UTF-8 text",
        inputs={"clips.csv": b"path,caption\nclip.mp4,un caf\xe9\n"},
    ),
    train(
        "fit-cache-meta-damaged",
        "task=fit",
        "data.cache={in}/cache",
        expect="meta.json is damaged",
        inputs={"cache/meta.json": b'{"format": "cogvid-lat'},
    ),
]

SAMPLE_CASES += [
    sample(name, T5_PATH, expect=expect, inputs=damaged_t5(file, change)) for name, file, change, expect in T5_CASES
]
SAMPLE_CASES += [  # one video over several processes, asked for without them (or with a value that cannot be)
    sample("sequence-without-torchrun", "parallel.sequence=2", expect="start it with torchrun --nproc_per_node 2"),
    sample(
        "cfg-and-sequence-without-torchrun",
        "parallel.sequence=2",
        "parallel.cfg=2",
        expect="start it with torchrun --nproc_per_node 4",
    ),
    sample("cfg-three", "parallel.cfg=3", expect="parallel.cfg=3 must be 1 or 2"),
    sample(
        "ring-not-dividing-the-sequence",
        "parallel.sequence=2",
        "parallel.ring=3",
        expect="parallel.ring=3 must divide parallel.sequence=2",
        env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
    ),
    sample(  # the shapes model has 4 heads: 3 ranks cannot share them
        "sequence-not-dividing-the-heads",
        "parallel.sequence=3",
        expect="must divide cogvideox-shapes's 4 attention heads",
        env={"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"},
    ),
    sample("sequence-zero", "parallel.sequence=0", expect="parallel.sequence=0 must be >= 1"),
    sample(  # as a torchrun rank sees it
        "sequence-with-cache",
        "parallel.sequence=2",
        "sampler.cache=0.2",
        expect="sampler.cache=0.2 does not run with parallel.sequence=2",
        env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
    ),
]

EXPORT_TO_DIFFUSERS = ("task=to_diffusers", "model=tiny", TINY_DIT, TINY_VAE, "parts=[transformer,vae]")
EXPORT_CASES = [
    export("unknown-task", "task=to_onnx", "model=tiny", "out={in}/o", expect="Invalid value 'to_onnx'"),
    export("unknown-model", "task=to_diffusers", "model=7b", "out={in}/o", expect="model/7b"),
    export(
        "misspelt-key",
        *EXPORT_TO_DIFFUSERS,
        "ovewrite=true",
        "out={in}/o",
        expect="Key 'ovewrite' not in 'ExportConfig'",
    ),
    export("not-key-value", *EXPORT_TO_DIFFUSERS, "overwrite", expect="an override is key=value"),
    export("unknown-flag", "--overwrite", *EXPORT_TO_DIFFUSERS, expect="unrecognized arguments: --overwrite"),
    export("out-a-file", *EXPORT_TO_DIFFUSERS, "out={in}/a_file", expect="out=", inputs=A_FILE),
    export("out-under-a-file", *EXPORT_TO_DIFFUSERS, "out={in}/a_file/o", expect="lies under a file", inputs=A_FILE),
    export(
        "overwrite-a-file",
        *EXPORT_TO_DIFFUSERS,
        "out={in}/a_file",
        "overwrite=true",
        expect="a_file lies under a file",
        inputs=A_FILE,
    ),
    export("parts-unknown", *EXPORT_TO_DIFFUSERS, "parts=[unet]", "out={in}/o", expect="Invalid value 'unet'"),
    export("dtype-unknown", *EXPORT_TO_DIFFUSERS, "dtype=fp8", "out={in}/o", expect="Invalid value 'fp8'"),
    export(
        "lora-scale-unknown",
        "task=lora_to_diffusers",
        "model=tiny",
        "lora=" + TINY_LORA,
        "lora_scale=half",
        "out={in}/o",
        expect="Invalid value 'half', expected one of [metadata, fold]",
    ),
    export(
        "lora-rank-negative",
        "task=lora_to_sat",
        "model=tiny",
        "model.lora_rank=-1",
        "out={in}/o",
        expect="model.lora_rank=-1 must be >= 0",
    ),
    export(
        "sat-config-form-unknown-dtype",
        "sat-config",
        "{fixture}/tiny_2b.yaml",
        "--name",
        "m",
        "--out-dir",
        "{in}/conf",
        "--dtype",
        "fp8",
        expect="invalid choice: 'fp8'",
    ),
    export(
        "sat-config-form-no-name",
        "sat-config",
        "{fixture}/tiny_2b.yaml",
        "--out-dir",
        "{in}/conf",
        expect="the following arguments are required: --name",
    ),
    export(
        "sat-config-form-out-a-file",
        "sat-config",
        "{fixture}/tiny_2b.yaml",
        "--name",
        "m",
        "--out-dir",
        "{in}/a_file",
        expect="a_file lies under a file",
        inputs=A_FILE,
    ),
    # past the value checks: what needs the task's code or the files
    export("no-task", "model=tiny", "out={in}/o", expect="Missing mandatory value: task"),
    export("no-model", "task=to_diffusers", "out={in}/o", expect="You must specify 'model'"),
    export("out-missing", *EXPORT_TO_DIFFUSERS, expect="out is not set"),
    export(
        "out-exists",
        *EXPORT_TO_DIFFUSERS,
        "out={in}/o",
        expect="already exists; pass overwrite=true",
        inputs={"o/keep.txt": b"mine\n"},
    ),
    export("parts-empty", *EXPORT_TO_DIFFUSERS, "parts=[]", "out={in}/o", expect="parts is empty"),
    export(
        "shard-size-junk",
        *EXPORT_TO_DIFFUSERS,
        "max_shard_size=big",
        "out={in}/o",
        expect="max_shard_size='big': expected a size",
    ),
    export(
        "ckpt-junk-pt",
        "task=to_diffusers",
        "model=tiny",
        "model.ckpt={in}/junk.pt",
        "parts=[transformer]",
        "out={in}/o",
        expect="junk.pt is not a torch checkpoint",
        inputs={"junk.pt": JUNK},
    ),
    export(
        "ckpt-is-lora",
        "task=to_diffusers",
        "model=tiny",
        "model.ckpt=" + TINY_LORA,
        "parts=[transformer]",
        "out={in}/o",
        expect="is a LoRA checkpoint",
    ),
    export(
        "lora-is-full-ckpt",
        "task=lora_to_diffusers",
        "model=tiny",
        "lora={fixture}/dit_ckpt",
        "out={in}/o",
        expect="holds no LoRA adapters",
    ),
    export(
        "to-sat-source-missing",
        "task=to_sat",
        "model=tiny",
        "source={in}/nowhere",
        "out={in}/o",
        expect="source={in}/nowhere does not exist",
    ),
    export(
        "to-sat-source-junk-safetensors",
        "task=to_sat",
        "model=tiny",
        "source={in}/d",
        "out={in}/o",
        expect="diffusion_pytorch_model.safetensors is not a safetensors",
        inputs={"d/transformer/config.json": b"{}", "d/transformer/diffusion_pytorch_model.safetensors": JUNK},
    ),
    export(
        "lora-to-sat-empty",
        "task=lora_to_sat",
        "model=tiny",
        "source={in}/l.safetensors",
        "out={in}/o",
        expect="l.safetensors is not a safetensors file",
        inputs={"l.safetensors": b""},
    ),
    export(
        "sat-config-junk",
        "task=sat_config",
        "source={in}/m.yaml",
        "name=m",
        "out={in}/conf",
        expect="cannot read SAT config",
        inputs={"m.yaml": JUNK},
    ),
    export(
        "sat-config-no-name",
        "task=sat_config",
        "source={fixture}/tiny_2b.yaml",
        "out={in}/conf",
        expect="needs name=NAME",
    ),
]

EXPORT_T5 = ("task=to_diffusers", "model=shapes", T5_PATH, "parts=[text_encoder,tokenizer]", "out={in}/o")
EXPORT_CASES += [
    export(name, *EXPORT_T5, expect=expect, inputs=damaged_t5(file, change))
    for name, file, change, expect in T5_CASES[-1:]
]

CASES = SAMPLE_CASES + TRAIN_CASES + EXPORT_CASES


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder`: a file's SHA-256, a symlink's target, "dir" for a folder."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            state[key] = f"-> {path.readlink()}"
        elif path.is_dir():
            state[key] = "dir"
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def stat_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: cheap enough to take around every case."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def changes(before: dict, after: dict) -> list[str]:
    return [
        f"{'new' if k not in before else 'gone' if k not in after else 'changed'}: {k}"
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k)
    ]


def make_inputs(folder: Path, inputs: dict[str, bytes | None]) -> None:
    folder.mkdir(parents=True)
    for relative, content in inputs.items():
        path = folder / relative
        if content is DIR:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)


def visible_lines(stream: str) -> list[str]:
    """The lines a terminal shows: a progress bar that redraws itself with carriage returns and clears itself
    leaves nothing; what follows its last carriage return stays."""
    return [shown for line in stream.split("\n") if (shown := line.rsplit("\r", 1)[-1]).strip()]


def run_case(case: Case, root: Path) -> list[str]:
    """Run one case in root/cwd with its inputs in root/in; what went wrong, or nothing."""
    cwd, inputs = root / "cwd", root / "in"
    cwd.mkdir(parents=True)
    make_inputs(inputs, case.inputs)
    places = {"in": inputs, "fixture": FIXTURE}
    args, expect = [arg.format(**places) for arg in case.args], case.expect.format(**places)
    before = {"cwd": snapshot(cwd), "inputs": snapshot(inputs), **{str(d): stat_snapshot(d) for d in SHARED_INPUTS}}
    env = {"OMP_NUM_THREADS": "1", **(case.env or {})}
    result = run_cli(case.prog, *args, cwd=cwd, stdin=case.stdin or b"", text=False, env=env)
    after = {"cwd": snapshot(cwd), "inputs": snapshot(inputs), **{str(d): stat_snapshot(d) for d in SHARED_INPUTS}}
    stdout, stderr = (stream.decode("utf-8", "replace") for stream in (result.stdout, result.stderr))
    problems = []
    if result.returncode != 2:
        problems.append(f"exit code {result.returncode}, not 2")
    lines = visible_lines(stderr)
    if len(lines) != 1 or not lines[0].startswith(f"{case.prog}: error: "):
        problems.append(f"stderr is not one line '{case.prog}: error: ...'")
    elif expect not in lines[0]:
        problems.append(f"the error line does not hold {expect!r}")
    if re.search(r"Traceback|File \".*\", line \d+", stdout + stderr):
        problems.append("a traceback")
    for where in before:
        problems += [f"{where}: {change}" for change in changes(before[where], after[where])]
    if problems:
        command = shlex.join([case.prog, *args])
        problems.append(f"command: {command}\n--- stderr:\n{stderr[-3000:]}\n--- stdout:\n{stdout[-1000:]}")
    return problems


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, list[str]]:
    """Run the selected cases (all, or those `-k` kept), WORKERS at a time; the shared inputs are hashed before
    and after, under the key "shared"."""
    params = [getattr(item, "callspec", None) for item in request.session.items if item.module.__name__ == __name__]
    selected = [p.params["case"] for p in params if p is not None and "case" in p.params]
    root = tmp_path_factory.mktemp("bad_input")
    shared = {str(folder): snapshot(folder) for folder in SHARED_INPUTS}
    with ThreadPoolExecutor(WORKERS) as pool:
        problems = dict(
            zip(
                [case.id for case in selected],
                pool.map(lambda case: run_case(case, root / case.id), selected),
                strict=True,
            )
        )
    problems["shared"] = [
        f"{folder}: {change}" for folder, state in shared.items() for change in changes(state, snapshot(Path(folder)))
    ]
    return problems


def test_the_suite_covers_every_command():
    counts = {
        prog: sum(case.prog == prog for case in CASES) for prog in ("cogvid-sample", "cogvid-train", "cogvid-export")
    }
    assert len(CASES) >= 80 and min(counts.values()) >= 25, counts
    assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_refused(case, outcomes):
    problems = outcomes[case.id]
    assert not problems, f"{case.id}:\n" + "\n".join(problems)


def test_shared_inputs_unchanged(outcomes):
    assert not outcomes["shared"], "\n".join(outcomes["shared"])


PROBE = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("cogvid.cli.{module}", run_name="__main__")
except SystemExit as ex:
    print(ex.code, [name for name in ("torch", "lightning", "diffusers") if name in sys.modules])
"""


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("sample", ["cogvid-sample", "infer.seed=-1"]),
        ("train", ["cogvid-train", "task=vae", "train.lr=-1"]),
        ("export", ["cogvid-export", "task=to_diffusers", "model=tiny", "out=/dev/null/o"]),
    ],
)
def test_a_refused_value_imports_no_torch(tmp_path, module, argv):
    """The value checks run before torch, Lightning or diffusers is imported: such a refusal takes a fraction of a
    second, not the seconds those imports cost."""
    code = PROBE.format(argv=argv, module=module)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=TIMEOUT)
    assert result.stdout.split("\n")[0] == "2 []", (result.stdout, result.stderr)
    assert list(tmp_path.iterdir()) == []
