"""cogvid-export: move weights and configs between SAT, cogvid and diffusers (`cogvid.interop.run.run_export`).

`cogvid-export task=... key=value ...` composes conf/export.yaml. The SAT YAML import also has the form
`cogvid-export sat-config PATH --name N --out-dir D [--dtype T]`, which becomes the overrides
`task=sat_config source=PATH name=N out=D [dtype=T]` and runs the same way. `--help` alone shows both forms.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import NoReturn

from cogvid.cli.common import fail
from cogvid.cli.hydra_app import run_hydra_app

PROG = "cogvid-export"

SAT_CONFIG_EXAMPLE = """\
example:
  cogvid-export sat-config CogVideo/sat/configs/cogvideox_5b.yaml --name my5b --out-dir ./myconf
  cogvid-sample --config-dir ./myconf model=my5b sampler=my5b infer.prompt="a red fox in snow"

The SAT YAML is read as data (yaml.safe_load); no module it names is imported. Every key must be one cogvid
knows: an unsupported target or value stops the import with one line naming its place in the YAML.
"""

WEIGHTS_EXAMPLE = """\
weights (Hydra-style, key=value; `cogvid-export model=tiny task=to_sat --help` lists every key):
  cogvid-export task=to_diffusers model=5b model.ckpt=SAT/transformer model.vae_ckpt=SAT/vae/3d-vae.pt \\
      model.text_encoder.path=SAT/t5-v1_1-xxl out=CogVideoX-5b-diffusers
  cogvid-export task=lora_to_diffusers model=5b lora=ckpts/lora-run out=my-lora
  cogvid-export task=to_sat model=5b source=CogVideoX-5b-diffusers out=CogVideoX-5b-sat
  cogvid-export task=lora_to_sat model=5b source=my-lora out=sat-lora [model.ckpt=SAT/transformer]
  cogvid-export task=merge_lora model=5b lora=ckpts/lora-run out=merged [model.ckpt=SAT/transformer]
"""


class _OneLineParser(argparse.ArgumentParser):
    """argparse with cogvid's error contract: a usage error is one line and exit code 2, not the usage text."""

    def error(self, message: str) -> NoReturn:
        fail(PROG, f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _OneLineParser(
        prog=PROG,
        description="Convert CogVideoX weights between SAT and diffusers, and SAT YAMLs to cogvid configs.",
        epilog=SAT_CONFIG_EXAMPLE + "\n" + WEIGHTS_EXAMPLE,
        formatter_class=raw,
    )
    sat = parser.add_subparsers(dest="command", required=True, metavar="COMMAND").add_parser(
        "sat-config",
        help="import a SAT model YAML as cogvid model/ and sampler/ configs (= task=sat_config)",
        description="Import a CogVideoX SAT model YAML (sat/configs/cogvideox_*.yaml) as two configs:\n"
        "DIR/model/NAME.yaml (every model field explicit) and DIR/sampler/NAME.yaml.",
        epilog=SAT_CONFIG_EXAMPLE,
        formatter_class=raw,
    )
    sat.add_argument("path", metavar="PATH", help="the SAT YAML (top-level `model:`, optionally `args:`)")
    sat.add_argument("--name", required=True, help="config name: the files' stem and the model's `name:`")
    sat.add_argument("--out-dir", required=True, metavar="DIR", help="config dir to write into")
    sat.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        help="model.dtype to write (default: args.fp16/args.bf16 of the YAML if set, else bf16)",
    )
    return parser


def _quoted(value: str) -> str:
    """`value` quoted for a Hydra override: `'` escaped, a run of backslashes before `'` or at the end doubled."""
    return "'" + re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"


def _task(cfg):
    from cogvid.interop.run import run_export  # checks the option values before it imports torch

    return run_export(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("sat-config", "-h", "--help"):
        args = _parser().parse_args(argv)  # only the sat-config form gets past parse_args
        given = {"source": args.path, "name": args.name, "out": args.out_dir}
        argv = ["task=sat_config", *(f"{key}={_quoted(value)}" for key, value in given.items())]
        argv += [f"dtype={args.dtype}"] if args.dtype else []
    logging.getLogger("cogvid").setLevel(logging.INFO)
    sys.argv = [sys.argv[0] if sys.argv else PROG, *argv]
    run_hydra_app(PROG, "export", _task)


if __name__ == "__main__":
    main()
