"""Shared test helpers: the SAT reference fixture and tiny configs composed from the real config tree."""

import atexit
import json
import locale
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from build_tiny_t5 import build_tiny_t5  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "sat_tiny_2b"
BIN = Path(sys.executable).parent  # the environment's console scripts: cogvid-sample, cogvid-train, cogvid-export
ROOT, TESTS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
# A guard against a hung child process, not a speed limit: the slowest child takes about 30 s on 2 idle cores, and
# the suite must pass beside other CPU-bound work on a machine twice as slow.
TIMEOUT = 1800


def pythonpath(*first: str | Path) -> str:
    """A PYTHONPATH for a child process: `first`, then this checkout (so that console scripts, `python -m` and
    torchrun children import the cogvid under test, not another installed copy), then the inherited one."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([*map(str, first), str(ROOT), *inherited]))


os.environ["PYTHONPATH"] = pythonpath()  # every child of the test process: this checkout's cogvid


class _Zygote:
    """tests/cli_zygote.py in a child process: forks one process per command line, with the imports done once."""

    @staticmethod
    def environment() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "OMP_NUM_THREADS")}

    def __init__(self):
        self.env = env = self.environment()
        self.log = tempfile.TemporaryFile()  # the zygote's own stderr (its children write to their request's files)
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "cli_zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
        )
        self._pending = b""
        self._answer(TIMEOUT)  # {"ready": true}

    def _answer(self, timeout: float) -> dict:
        """The next JSON line from the zygote, read unbuffered (so that select sees every line not yet taken)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], timeout)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.log.seek(0)
                said = self.log.read()[-3000:].decode(errors="replace")
                raise RuntimeError(f"tests/cli_zygote.py gave no answer (exit code {self.proc.poll()}): {said}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, request: dict, timeout: float) -> int:
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        pid = self._answer(TIMEOUT)["pid"]
        try:
            return self._answer(timeout)["returncode"]
        except RuntimeError:
            os.killpg(pid, signal.SIGKILL) if request.get("ranks") else os.kill(pid, signal.SIGKILL)
            self._answer(TIMEOUT)
            raise subprocess.TimeoutExpired(request["args"], timeout) from None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT)


_zygotes: dict[int, _Zygote] = {}  # one per thread that runs commands (the bad-input suite runs two at a time)


@atexit.register
def _close_zygotes() -> None:
    for zygote in _zygotes.values():
        zygote.close()


def _decoded(data: bytes) -> str:
    """Bytes as subprocess.run(text=True) returns them: the locale's encoding, universal newlines."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def _read_at_import(env: dict[str, str], zygote_env: dict[str, str]) -> bool:
    """Whether `env` sets a variable that tests/cli_zygote.py's preloaded libraries read when imported (its
    IMPORT_TIME_ENV) otherwise than the zygote's environment does."""
    from cli_zygote import IMPORT_TIME_ENV

    names = {k for k in (*env, *zygote_env) if k.startswith(IMPORT_TIME_ENV)}
    return any(env.get(k) != zygote_env.get(k) for k in names)


def run_cli(
    prog: str,
    *args: str,
    cwd: Path | None = None,
    stdin: bytes | str | None = None,
    text: bool = True,
    env: dict[str, str] | None = None,
    preexec_fn=None,
    console_script: bool = False,
    crash: tuple[str, int] | None = None,
) -> subprocess.CompletedProcess:
    """Run an installed command as a user does, without the test environment's HYDRA_FULL_ERROR (plus `env`);
    stdout and stderr captured. `preexec_fn` runs in the child before the command (e.g. to set a resource limit).

    The command runs in a process of its own either way: with `console_script` or `preexec_fn`, its console script
    in a subprocess; otherwise a process forked from tests/cli_zygote.py, which has imported the commands already
    (the same command line, working dir, environment, streams and exit code, without 3-5 s of imports), unless `env`
    sets a variable that the zygote's preloaded libraries read when imported (see `_read_at_import`). `crash`:
    (point, n) of tests/crash_run.py, armed in that process: it SIGKILLs itself at the event."""
    env = child_env(env)
    zygote = _zygotes.get(threading.get_ident())
    if _read_at_import(env, zygote.env if zygote else _Zygote.environment()):
        assert crash is None, "tests/cli_zygote.py arms crash points; this environment needs a console script"
        console_script = True  # the zygote's preloaded libraries have read these variables already
    if console_script or preexec_fn is not None:
        return subprocess.run(
            [str(BIN / prog), *args],
            input=stdin,
            capture_output=True,
            text=text,
            cwd=cwd,
            env=env,
            timeout=TIMEOUT,
            preexec_fn=preexec_fn,
        )
    return _in_zygote(
        {"prog": prog, "argv0": str(BIN / prog), "args": args, "cwd": cwd, "env": env, "crash": crash}, stdin, text
    )


def run_ranks(
    ranks: int,
    *args: str,
    prog: str | None = None,
    script: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    preload: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node RANKS` of an installed command (`prog`) or a Python `script`, with
    `args`: the ranks are forked from tests/cli_zygote.py with the environment torchrun gives its workers (its
    `_launch_ranks`), so each saves torchrun's start and its own 5-7 s of imports; `preload`: modules the zygote
    imports once for them (e.g. deepspeed). The environment is run_cli's. stdout and stderr: all ranks', as
    torchrun passes them on; the exit code: the first failing rank's (the others are then killed), or 0."""
    assert (prog is None) != (script is None), "a command or a script"
    request = {"prog": prog, "argv0": str(BIN / prog) if prog else None, "script": str(script) if script else None}
    request |= {"args": args, "cwd": cwd, "env": _forkable_env(env), "ranks": ranks, "preload": list(preload)}
    return _in_zygote(request, None, True)


def run_script(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python script args` in a process forked from tests/cli_zygote.py (its imports done), in this working dir,
    with run_cli's environment plus `env`: stdout, stderr and exit code."""
    request = {"prog": None, "argv0": None, "script": str(script), "args": args, "cwd": None, "env": _forkable_env(env)}
    return _in_zygote(request, None, True)


def child_env(env: dict[str, str] | None) -> dict[str, str]:
    """A command's environment as a user's shell gives it: this one without HYDRA_FULL_ERROR, unbuffered, plus `env`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _forkable_env(env: dict[str, str] | None) -> dict[str, str]:
    """child_env, for a process forked from the zygote: none of the variables its preloaded libraries have read."""
    env = child_env(env)
    zygote = _zygotes.get(threading.get_ident())
    assert not _read_at_import(env, zygote.env if zygote else _Zygote.environment()), "set it in the zygote instead"
    return env


def _in_zygote(request: dict, stdin: bytes | str | None, text: bool) -> subprocess.CompletedProcess:
    """Run a request (tests/cli_zygote.py's) in a process forked from this thread's zygote: the completed process."""
    zygote = _zygotes.get(threading.get_ident()) or _zygotes.setdefault(threading.get_ident(), _Zygote())
    args = [str(a) for a in request["args"]]
    with tempfile.TemporaryDirectory(prefix="run_cli-") as streams:
        paths = {name: Path(streams, name) for name in ("stdin", "stdout", "stderr")}
        data = stdin.encode(locale.getpreferredencoding(False)) if isinstance(stdin, str) else stdin or b""
        paths["stdin"].write_bytes(data)
        for name in ("stdout", "stderr"):
            paths[name].touch()
        request = {
            **request,
            "args": args,
            "cwd": str(request["cwd"] or os.getcwd()),
            "crash": list(request["crash"]) if request.get("crash") else None,
            **{name: str(path) for name, path in paths.items()},
        }
        code = zygote.run(request, TIMEOUT)
        out, err = paths["stdout"].read_bytes(), paths["stderr"].read_bytes()
    if text:
        out, err = _decoded(out), _decoded(err)
    return subprocess.CompletedProcess([request.get("script") or request["argv0"], *args], code, out, err)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


def reference(name: str) -> dict[str, torch.Tensor]:
    """One of the fixture's safetensors files (outputs of the original SAT code)."""
    return load_file(FIXTURE / f"{name}.safetensors")


XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # pytest -n N: N test processes


@pytest.fixture(autouse=True)
def _deterministic_threads(request):
    """2 intra-op threads, or the module's TORCH_THREADS (1 where tensors are so tiny that threads only spin); 1
    under pytest-xdist, where the workers already keep the cores busy."""
    torch.set_num_threads(1 if XDIST_WORKERS > 1 else getattr(request.module, "TORCH_THREADS", 2))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A tiny T5 in the SAT release layout (spiece.model + config.json + weights), built offline in the test:
    a sentencepiece tokenizer trained here, a random encoder (seed 0) with d_model 32, the tiny DiT's text width."""
    return build_tiny_t5(tmp_path_factory.mktemp("t5-v1_1-tiny"))


# SAT model YAMLs of the five released variants, written by sat_variant_doc: SAT's schema with only the keys cogvid's
# importer requires or reads a non-default value from (every variant has the loss block, so that the importer checks
# its three ZeroSNR schedules agree). Targets are bare class names: the importer matches only the last dotted
# component. tests/test_sat_config.py imports each one and compares the result with conf/model/<variant>.yaml.
SAT_VARIANTS = ("cogvideox_2b", "cogvideox_5b", "cogvideox_5b_i2v", "cogvideox1.5_5b", "cogvideox1.5_5b_i2v")


def _component(target: str, **params) -> dict:
    return {"target": target, "params": params} if params else {"target": target}


def sat_variant_doc(variant: str) -> dict:
    """One variant's SAT model YAML as a dict (SAT's schema, our values from the released configs)."""
    if variant not in SAT_VARIANTS:
        raise ValueError(variant)
    v1_5, i2v, is_2b = variant.startswith("cogvideox1.5"), variant.endswith("_i2v"), variant == "cogvideox_2b"
    text_length = 224 if v1_5 else 226

    def zero_snr() -> dict:  # the same schedule in the denoiser, the sampler and the loss; 2B alone shifts it
        return _component("ZeroSNRDDPMDiscretization", **({"shift_scale": 3.0} if is_2b else {}))

    if is_2b:
        position = _component(
            "Basic3DPositionEmbeddingMixin", text_length=226, height_interpolation=1.875, width_interpolation=1.875
        )
    else:
        learnable = {"learnable_pos_embed": True} if variant == "cogvideox_5b_i2v" else {}
        position = _component(
            "Rotary3DPositionEmbeddingMixin", text_length=text_length, hidden_size_head=64, **learnable
        )
    network = {
        "hidden_size": 1920 if is_2b else 3072,
        "num_attention_heads": 30 if is_2b else 48,
        "num_layers": 30 if is_2b else 42,
        "time_embed_dim": 512,
        "in_channels": 32 if i2v else 16,  # the image latent rides along the noisy one
        "out_channels": 16,
        "patch_size": [2, 2, 2] if v1_5 else 2,  # a list selects the 1.5 code
        "num_frames": 81 if v1_5 else 49,
        "time_compressed_rate": 4,
        "latent_height": 300 if v1_5 else 60,
        "latent_width": 300 if v1_5 else 90,
        "elementwise_affine": True,
        "transformer_args": {},
        "modules": {
            "pos_embed_config": position,
            "patch_embed_config": _component("ImagePatchEmbeddingMixin", text_hidden_size=4096),
            "adaln_layer_config": _component("AdaLNMixin"),
            "final_layer_config": _component("FinalLayerMixin"),
        },
    }
    if v1_5 and i2v:
        network["ofs_embed_dim"] = 512

    def vae(target: str) -> dict:  # the encoder and decoder halves of the 3-D VAE have the same sizes
        return _component(target, ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=3, z_channels=16)

    timesteps = {"num_idx": 1000, "uniform_sampling": True, **({"group_num": 40} if v1_5 else {})}
    model = {
        "scale_factor": 1.15258426 if is_2b else 0.7,
        "network_config": _component("DiffusionTransformer", **network),
        "conditioner_config": _component(
            "GeneralConditioner", emb_models=[_component("FrozenT5Embedder", max_length=text_length)]
        ),
        "first_stage_config": _component(
            "VideoAutoencoderInferenceWrapper",
            encoder_config=vae("ContextParallelEncoder3D"),
            decoder_config=vae("ContextParallelDecoder3D"),
            regularizer_config=_component("DiagonalGaussianRegularizer"),
            loss_config=_component("Identity"),
        ),
        "denoiser_config": _component(
            "DiscreteDenoiser",
            num_idx=1000,
            quantize_c_noise=False,
            scaling_config=_component("VideoScaling"),
            weighting_config=_component("EpsWeighting"),
            discretization_config=zero_snr(),
        ),
        "loss_fn_config": _component(
            "VideoDiffusionLoss",
            sigma_sampler_config=_component("DiscreteSampling", **timesteps, discretization_config=zero_snr()),
        ),
        "sampler_config": _component(
            "VPSDEDPMPP2MSampler",
            num_steps=50,
            guider_config=_component("DynamicCFG", scale=6, exp=5, num_steps=50),
            discretization_config=zero_snr(),
        ),
    }
    if variant == "cogvideox1.5_5b":
        model["latent_input"] = True
    if i2v:
        model.update(noised_image_input=True, noised_image_dropout=0.05)
    doc = {"model": model}
    if is_2b:  # an inference-style `args:`: fp16 (2B's recommended dtype) and where the weights came from
        doc["args"] = {"fp16": True, "load": "CogVideoX-2b-sat/transformer"}
    return doc


@pytest.fixture(scope="session")
def sat_configs(tmp_path_factory) -> Path:
    """A folder with <variant>.yaml for each of SAT_VARIANTS (see sat_variant_doc)."""
    root = tmp_path_factory.mktemp("sat_configs")
    for variant in SAT_VARIANTS:
        (root / f"{variant}.yaml").write_text(yaml.safe_dump(sat_variant_doc(variant), sort_keys=False))
    return root


def text_contexts(pipeline, prompt: str, negative_prompt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cond, uncond) contexts `VideoPipeline.make_video` samples a prompt with: uncond is zeros unless
    sampler.uncond=negative_prompt."""
    from cogvid.diffusion.conditioning import unconditional_context

    cond = pipeline.encode_texts([prompt])
    uncond = unconditional_context(
        pipeline.settings.sampler.uncond, cond, pipeline.encode_texts, [negative_prompt or ""]
    )
    return cond, uncond
