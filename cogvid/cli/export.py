"""cogvid-export: move weights and configs between SAT, cogvid and diffusers.

Two forms. Weights go Hydra-style, like the other entry points: `task=...` plus key=value overrides over the
composed model config (conf/export.yaml); `run_export(cfg)` is the testable core. The SAT YAML import keeps its
argparse subcommand, `cogvid-export sat-config PATH --name N --out-dir D`. `main` dispatches on the first argument.
A `CogvidError` from either becomes `cogvid-export: error: <one line>` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cogvid.cli.common import run_reporting_errors
from cogvid.utils.errors import CogvidError

PROG = "cogvid-export"

WEIGHTS_EXAMPLE = """\
weights (Hydra-style, key=value; `cogvid-export model=tiny task=to_sat --help` lists every key):
  cogvid-export task=to_diffusers model=5b model.ckpt=SAT/transformer model.vae_ckpt=SAT/vae/3d-vae.pt \\
      model.text_encoder.path=SAT/t5-v1_1-xxl out=CogVideoX-5b-diffusers
  cogvid-export task=lora_to_diffusers model=5b lora=ckpts/lora-run out=my-lora
  cogvid-export task=to_sat model=5b source=CogVideoX-5b-diffusers out=CogVideoX-5b-sat
  cogvid-export task=lora_to_sat model=5b source=my-lora out=sat-lora [model.ckpt=SAT/transformer]
  cogvid-export task=merge_lora model=5b lora=ckpts/lora-run out=merged [model.ckpt=SAT/transformer]
"""

SAT_CONFIG_EXAMPLE = """\
example:
  cogvid-export sat-config CogVideo/sat/configs/cogvideox_5b.yaml --name my5b --out-dir ./myconf
  cogvid-sample --config-dir ./myconf model=my5b sampler=my5b infer.prompt="a red fox in snow"

The SAT YAML is read as data (yaml.safe_load); no module it names is imported. Every key must be one cogvid
knows: an unsupported target or value stops the import with one line naming its place in the YAML.
"""


def _add_sat_config(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sat-config",
        help="import a SAT model YAML as cogvid model/ and sampler/ configs",
        description="Import a CogVideoX SAT model YAML (sat/configs/cogvideox_*.yaml) as two configs:\n"
        "DIR/model/NAME.yaml (every model field explicit) and DIR/sampler/NAME.yaml.",
        epilog=SAT_CONFIG_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="the SAT YAML (top-level `model:`, optionally `args:`)")
    p.add_argument("--name", required=True, help="config name: the files' stem and the model's `name:`")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="config dir to write into")
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="model.dtype to write (default: args.fp16/args.bf16 of the YAML if set, else bf16)",
    )
    p.set_defaults(run=_run_sat_config)


def _run_sat_config(args: argparse.Namespace) -> None:
    from cogvid.sat.yaml_import import export_sat_config

    model_path, sampler_path = export_sat_config(args.path, args.name, args.out_dir, dtype=args.dtype)
    print(
        f"wrote {model_path} and {sampler_path}; use them with: "
        f"cogvid-sample --config-dir {args.out_dir} model={args.name} sampler={args.name}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert CogVideoX weights between SAT and diffusers, and SAT YAMLs to cogvid configs.",
        epilog=SAT_CONFIG_EXAMPLE + "\n" + WEIGHTS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_sat_config(commands)
    return parser


def run_export(cfg) -> dict:
    """Run one export task from a composed `export` config; returns the mapping reports by part."""
    from cogvid.config.schema import ExportPart, ExportTask
    from cogvid.interop.staged_output import check_output_free, staged_folder

    task = ExportTask(cfg.task)
    model = cfg.model
    if task is ExportTask.sat_config:
        return _run_sat_config_task(cfg)
    out = check_output_free(cfg.out, cfg.overwrite)
    parts = {ExportPart(p) for p in cfg.parts}
    if not parts:
        raise CogvidError("parts is empty: name at least one of transformer, vae, scheduler, text_encoder, tokenizer")
    dtype = _torch_dtype(cfg.dtype)

    if task is ExportTask.to_diffusers:
        from cogvid.interop.sat_to_diffusers import check_inputs, export_to_diffusers
        from cogvid.interop.tensor_io import parse_size

        check_inputs(model, parts)
        shard = parse_size(cfg.max_shard_size)
        with staged_folder(out, cfg.overwrite) as staged:
            reports = export_to_diffusers(model, staged, parts, dtype or _torch_dtype(model.dtype), shard)
    elif task is ExportTask.to_sat:
        from cogvid.interop.diffusers_to_sat import import_to_sat

        source = _required(cfg.source, "source", "the diffusers pipeline, transformer or vae folder")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = import_to_sat(model, source, staged, parts, dtype)
    elif task is ExportTask.lora_to_diffusers:
        from cogvid.interop.lora import export_lora

        lora = _required(cfg.lora, "lora", "the SAT LoRA checkpoint folder")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = {"lora": export_lora(model, lora, staged, cfg.lora_scale)}
    elif task is ExportTask.lora_to_sat:
        from cogvid.interop.lora import import_lora

        source = _required(cfg.source, "source", "the diffusers LoRA (folder or pytorch_lora_weights.safetensors)")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = {"lora": import_lora(model, source, staged, model.get("ckpt"))}
    else:  # merge_lora
        from cogvid.interop.lora import merge_lora

        lora = _required(cfg.lora, "lora", "the SAT LoRA checkpoint folder")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = {"merged": merge_lora(model, lora, model.get("ckpt"), staged, dtype)}
    summary = "; ".join(f"{part}: {report.summary()}" for part, report in reports.items())
    print(f"wrote {out}" + (f" ({summary})" if summary else ""))
    return reports


def _required(value, key: str, what: str) -> str:
    from pathlib import Path

    if not value:
        raise CogvidError(f"{key} is not set: give {what}, e.g. {key}=PATH")
    if not Path(value).expanduser().exists():
        raise CogvidError(f"{key}={value} does not exist")
    return str(value)


def _torch_dtype(dtype):
    import torch

    from cogvid.config.schema import Dtype

    if dtype is None:
        return None
    return {Dtype.fp32: torch.float32, Dtype.fp16: torch.float16, Dtype.bf16: torch.bfloat16}[Dtype(dtype)]


def _run_sat_config_task(cfg) -> dict:
    from cogvid.sat.yaml_import import export_sat_config

    source = _required(cfg.source, "source", "the SAT model YAML")
    if not cfg.name or not cfg.out:
        raise CogvidError("task=sat_config needs name=NAME and out=CONFIG_DIR")
    dtype = None if cfg.dtype is None else str(getattr(cfg.dtype, "value", cfg.dtype))
    model_path, sampler_path = export_sat_config(source, cfg.name, cfg.out, dtype=dtype)
    print(
        f"wrote {model_path} and {sampler_path}; use them with: "
        f"cogvid-sample --config-dir {cfg.out} model={cfg.name} sampler={cfg.name}"
    )
    return {}


def _uses_argparse(argv: list[str]) -> bool:
    """The sat-config subcommand and plain `--help` go to argparse; key=value arguments go to Hydra."""
    return not argv or argv[0] in ("sat-config", "-h", "--help")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _uses_argparse(argv):
        args = build_parser().parse_args(argv)
        run_reporting_errors(PROG, lambda: args.run(args))
        return
    from cogvid.cli.hydra_app import run_hydra_app

    logging.getLogger("cogvid").setLevel(logging.INFO)
    sys.argv = [sys.argv[0] if sys.argv else PROG, *argv]
    run_hydra_app(PROG, "export", run_export)


if __name__ == "__main__":
    main()
