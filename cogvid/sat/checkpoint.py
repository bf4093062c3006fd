"""SAT checkpoints, read and written: the DiT's `mp_rank_00_model_states.pt` folders and the VAE's `3d-vae.pt`.

Reading loads safely (the tensors go into a network, strictly, in `cogvid.models.state`); writing goes through one
streaming writer, `write_sat_model_states`, under `save_sat_checkpoint` (training) and the diffusers -> SAT and LoRA
imports.

Layout, as SAT and DeepSpeed write it:

    DIR/latest                              "1000" (an iteration > 0) or "release"
    DIR/<iter>/mp_rank_00_model_states.pt   {"module": {"model.diffusion_model.<dit key>": tensor, ...}, ...}
    DIR/model_config.json                   {"model_class": "Module", "model_parallel_size": 1}
    vae/3d-vae.pt                           {"state_dict": {"encoder.*", "decoder.*", "loss.*": tensor}}

SAT itself unpickles with a plain `torch.load`, so a checkpoint can run code; here every file goes through
`cogvid.utils.user_files.safe_torch_load`: `torch.load(weights_only=True)` with only numpy's array, scalar and dtype
reconstructors allowed on top of torch's defaults, which is what a SAT training checkpoint's RNG states need.

The writer produces the records `torch.save` writes (data.pkl, byteorder, data/<i>) through torch's zip writer, but
its pickle refers to each storage by key, so each tensor is built (or copied alone onto its own storage) only when
its record is written: a conversion never holds the whole checkpoint in memory. Every file is written atomically.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import math
import os
import pickle
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from cogvid.models.lora import is_adapter
from cogvid.models.state import load_vae_state
from cogvid.models.vae import CausalVideoVAE
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import atomic_path, write_atomic
from cogvid.utils.lazy_tensors import TensorTarget
from cogvid.utils.runtime import STORAGE_NAMES, dtype_name
from cogvid.utils.user_files import read_torch_state

logger = logging.getLogger(__name__)

DIT_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."  # the VAE's prefix inside a full SAT engine state dict
MODEL_STATES = "mp_rank_00_model_states.pt"
SAT_ITERATION = 1  # the iteration folder of the checkpoints cogvid-export writes
SAT_MODEL_CONFIG = {"model_class": "Module", "model_parallel_size": 1}
_STATE_DICT_WRAPPERS = ("module", "model", "state_dict")
_VAE_WRAPPERS = ("state_dict", "module", "model")
_DIT_KEY_STARTS = ("transformer.layers.", "transformer.final_layernorm.", "mixins.", "time_embed.")
_SHOW = 3  # keys listed per category in a load error
_MAX_LATEST = 64  # bytes of DIR/latest read: an iteration number or "release"


def _listing(directory: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    if not names:
        return "an empty folder"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def resolve_sat_checkpoint(path: str | os.PathLike) -> Path:
    """The `.pt` file of a SAT checkpoint: `DIR/<DIR/latest>/mp_rank_00_model_states.pt`, or `path` itself."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise CogvidError(f"checkpoint {path} does not exist")
    expected = f"expected {path}/latest and {path}/<iter>/{MODEL_STATES}"
    latest = path / "latest"
    if not latest.is_file():
        if (path / MODEL_STATES).is_file():  # pointed at the iteration folder itself
            return path / MODEL_STATES
        nested = [p.name for p in sorted(path.iterdir()) if (p / "latest").is_file()]
        hint = f"; did you mean {path / nested[0]}?" if nested else ""
        raise CogvidError(f"{path} is not a SAT checkpoint folder: {expected}, found {_listing(path)}{hint}")
    try:
        with open(latest, "rb") as f:
            tag = f.read(_MAX_LATEST + 1).decode(errors="replace").strip()  # a few bytes, however large the file
    except OSError as ex:
        raise CogvidError(f"cannot read {latest} ({ex.strerror or ex})") from None
    if tag != "release":
        # at most 18 digits: int() refuses strings of more than 4300, and no run has 10**18 iterations
        if not re.fullmatch(r"\d{1,18}", tag) or int(tag) <= 0:
            raise CogvidError(f"{latest} holds {tag[:40]!r}: expected an iteration number > 0 or 'release'")
        tag = str(int(tag))
    weights = path / tag / MODEL_STATES
    if not weights.is_file():
        found = _listing(path / tag) if (path / tag).is_dir() else _listing(path)
        where = f"{path / tag}" if (path / tag).is_dir() else f"{path}"
        raise CogvidError(f"{latest} names iteration {tag} but {weights} does not exist ({where} has: {found})")
    return weights


def read_sat_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(DiT state dict without `model.diffusion_model.`, everything else) from a SAT checkpoint.

    The second dict holds the other top-level entries (`iteration`, RNG states, DeepSpeed bookkeeping) and the
    state-dict entries of other parts (`first_stage_model.*`, `conditioner.*`), each under its own key.
    """
    file = resolve_sat_checkpoint(path)
    return _dit_state(file, *read_torch_state(file, _STATE_DICT_WRAPPERS))


def _dit_state(file: Path, full: dict, aside: dict, wrapper: str | None) -> tuple[dict[str, torch.Tensor], dict]:
    """`read_sat_state_dict` of the checkpoint `file`, given what `read_torch_state` read of it."""
    if wrapper is None and not (full and all(isinstance(v, torch.Tensor) for v in full.values())):
        raise CogvidError(
            f"{file} holds no state dict: expected a top-level 'module' (or 'model' / 'state_dict') entry, "
            f"found {sorted(full)[:8]}"
        )
    state: dict[str, torch.Tensor] = {}
    if any(k.startswith(DIT_PREFIX) for k in full):
        for k, v in full.items():
            if k.startswith(DIT_PREFIX) and isinstance(v, torch.Tensor):
                state[k[len(DIT_PREFIX) :]] = v
            else:
                aside[k] = v
    elif any(k.startswith(_DIT_KEY_STARTS) for k in full):  # already stripped
        for k, v in full.items():
            if isinstance(v, torch.Tensor):
                state[k] = v
            else:
                aside[k] = v
    else:
        raise CogvidError(
            f"{file} holds no DiT weights: no key starts with {DIT_PREFIX!r} or looks like a DiT key "
            f"(first keys: {', '.join(sorted(full)[:_SHOW])})"
        )
    return state, aside


def read_lora_adapters(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The adapter matrices (`matrix_A.k` / `matrix_B.k`) of a SAT LoRA checkpoint, folder or file; the frozen
    `.original.` weights a full LoRA checkpoint also holds (as SAT saves it) are left out."""
    return _adapters(path, read_sat_state_dict(path)[0])


def _adapters(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`read_lora_adapters` of the checkpoint at `path`, given its DiT state dict."""
    adapters = {k: v for k, v in state.items() if is_adapter(k)}
    if not adapters:
        raise CogvidError(f"{path}: no LoRA adapters (matrix_A / matrix_B) in this checkpoint")
    return adapters


def read_sat_vae_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The VAE tensors of a SAT `3d-vae.pt` (`{"state_dict": ...}`), without `loss.*` (SAT's ignore_keys).

    Also takes a bare state dict, a `module`/`model` wrapper, or a full engine state dict (`first_stage_model.*`).
    """
    return _vae_state(path, *read_torch_state(path, _VAE_WRAPPERS))


def _vae_state(path: str | os.PathLike, state: dict, aside: dict, wrapper: str | None) -> dict[str, torch.Tensor]:
    """`read_sat_vae_state_dict` of the file at `path`, given what `read_torch_state` read of it."""
    top = [*aside, wrapper] if wrapper else list(state)
    if any(k.startswith(VAE_PREFIX) for k in state):
        state = {k[len(VAE_PREFIX) :]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors or not state:
        found = ", ".join(sorted(str(k) for k in top)[:8])
        raise CogvidError(f"{path} holds no VAE state dict: expected {{'state_dict': {{name: tensor}}}}, found {found}")
    return {k: v for k, v in state.items() if not k.startswith("loss")}


def read_sat_files(
    ckpt: str | os.PathLike | None, lora_ckpt: str | os.PathLike | None, vae_ckpt: str | os.PathLike
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]:
    """(the DiT tensors of `ckpt`, the adapters of `lora_ckpt`, each None when its path is None, the VAE tensors of
    `vae_ckpt`): every checkpoint file found first, then every file read, then each taken apart as
    `read_sat_state_dict`, `read_lora_adapters` and `read_sat_vae_state_dict` do."""
    dit_file = resolve_sat_checkpoint(ckpt) if ckpt else None
    lora_file = resolve_sat_checkpoint(lora_ckpt) if lora_ckpt else None
    dit = read_torch_state(dit_file, _STATE_DICT_WRAPPERS) if dit_file else None
    lora = read_torch_state(lora_file, _STATE_DICT_WRAPPERS) if lora_file else None
    vae = read_torch_state(vae_ckpt, _VAE_WRAPPERS)
    return (
        _dit_state(dit_file, *dit)[0] if dit is not None else None,
        _adapters(lora_ckpt, _dit_state(lora_file, *lora)[0]) if lora is not None else None,
        _vae_state(vae_ckpt, *vae),
    )


def load_sat_vae(
    path: str | os.PathLike, vae: CausalVideoVAE | None = None, dtype: torch.dtype | None = None
) -> CausalVideoVAE:
    """Strictly load SAT's `3d-vae.pt` into `vae` (default: the released size) and return it in eval mode
    (`cogvid.models.state.load_vae_state`)."""
    state = read_sat_vae_state_dict(path)  # read and checked before the network is built
    return load_vae_state(CausalVideoVAE() if vae is None else vae, state, path, dtype)


# --- writing --------------------------------------------------------------------------------------------------------


class _StorageRef:
    """Stands for a tensor's storage in the pickle; torch.load resolves it to the record `data/<key>`."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles as torch's own `_rebuild_tensor_v2(storage, 0, shape, contiguous stride, False, {})`."""

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        stride, step = [], 1
        for size in reversed(self.shape):
            stride.append(step)
            step *= size
        args = (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _RefPickler(pickle.Pickler):
    """Pickles `_StorageRef`s as torch's persistent storage ids; a real tensor (in `extra`) is refused, as it would
    pickle as code a safe load does not run."""

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            if obj.dtype not in STORAGE_NAMES:
                raise ValueError(f"cannot write a {dtype_name(obj.dtype)} tensor into a SAT checkpoint")
            return ("storage", getattr(torch, STORAGE_NAMES[obj.dtype]), obj.key, "cpu", obj.numel)
        if isinstance(obj, (torch.UntypedStorage, torch.TypedStorage)):
            raise ValueError("extra must hold plain values (numbers, strings, containers), not tensors")
        return None


def _alone_on_storage(t: torch.Tensor) -> torch.Tensor:
    """`t` on the CPU, contiguous and alone on its storage (so only its own bytes are written): `t` itself when it
    already is, else a copy (a view into a larger tensor, a chunk of a fused one)."""
    t = t.detach().to("cpu")
    if t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _as_targets(tensors: Mapping[str, torch.Tensor] | Iterable[TensorTarget]) -> list[TensorTarget]:
    if isinstance(tensors, Mapping):
        return [TensorTarget.from_tensor(name, t) for name, t in tensors.items()]
    return list(tensors)


def write_sat_model_states(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor] | Iterable[TensorTarget],
    *,
    prefix: str = "",
    wrapper: str = "module",
    extra: Mapping | None = None,
    desc: str = "writing",
) -> Path:
    """Atomically write a torch zip file that `torch.load` reads as `{wrapper: {prefix + name: tensor}, **extra}`.

    `tensors`: a state dict, or `TensorTarget`s built one at a time as their records are written. `extra`: plain
    values beside the state dict (SAT's `iteration`, cogvid's run metadata).
    """
    path = Path(path)
    targets = _as_targets(tensors)
    refs = [_StorageRef(str(i), t.dtype, math.prod(t.shape)) for i, t in enumerate(targets)]
    module = {prefix + t.name: _TensorRef(ref, t.shape) for t, ref in zip(targets, refs, strict=True)}
    buffer = io.BytesIO()
    _RefPickler(buffer, protocol=2).dump({wrapper: module, **(extra or {})})
    data = buffer.getvalue()
    with atomic_path(path) as tmp, torch.serialization._open_zipfile_writer(str(tmp)) as zip_file:
        zip_file.write_record("data.pkl", data, len(data))
        zip_file.write_record(".format_version", "1", 1)
        zip_file.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        with tqdm(total=len(targets), desc=desc, unit="tensor", leave=False, disable=None) as progress:
            for t, ref in zip(targets, refs, strict=True):
                tensor = _alone_on_storage(t.materialize())
                storage = tensor.untyped_storage()
                zip_file.write_record(f"data/{ref.key}", storage, storage.nbytes())
                del tensor, storage
                progress.update(1)
    return path


def save_sat_checkpoint(
    weights: nn.Module | Mapping[str, torch.Tensor] | Iterable[TensorTarget],
    directory: str | os.PathLike,
    iteration: int,
    extra: dict | None = None,
    desc: str = "sat",
) -> Path:
    """Write DiT weights as SAT does: `DIR/<iteration>/mp_rank_00_model_states.pt`, then `DIR/latest`.

    `weights`: a module, a state dict (such as ZeRO-3's gathered weights) or `TensorTarget`s (a conversion, built
    tensor by tensor). `latest` is replaced only after the weights (and `model_config.json`) are complete on disk,
    so an interrupted save never becomes the checkpoint a later load picks. Returns the weights file.
    """
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration <= 0:
        raise ValueError(f"iteration must be an int > 0 (SAT's `latest` rule), got {iteration!r}")
    extra = dict(extra or {})
    if "module" in extra:
        raise ValueError("extra must not hold 'module': that entry is the model's state dict")
    directory = Path(directory)
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    targets = _as_targets(state)
    path = directory / str(iteration) / MODEL_STATES
    write_sat_model_states(path, targets, prefix=DIT_PREFIX, extra=extra, desc=desc)
    config = json.dumps(SAT_MODEL_CONFIG, indent=4).encode()
    write_atomic(directory / "model_config.json", lambda f: f.write(config))
    write_atomic(directory / "latest", lambda f: f.write(str(iteration).encode()))
    logger.info("saved %d tensors to %s", len(targets), path)
    return path
