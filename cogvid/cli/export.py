"""cogvid-export: move configs (and, later, weights) between SAT, cogvid and diffusers.

One subcommand per conversion. Each has an `_add_<command>` function that declares its arguments and sets
`run` to a function of the parsed arguments; `main` dispatches. A `CogvidError` from any of them becomes
`cogvid-export: error: <one line>` and exit code 2.
"""

from __future__ import annotations

import argparse

from cogvid.cli.common import run_reporting_errors

PROG = "cogvid-export"

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
    from cogvid.sat_config import export_sat_config

    model_path, sampler_path = export_sat_config(args.path, args.name, args.out_dir, dtype=args.dtype)
    print(
        f"wrote {model_path} and {sampler_path}; use them with: "
        f"cogvid-sample --config-dir {args.out_dir} model={args.name} sampler={args.name}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert configs between SAT and cogvid.",
        epilog=SAT_CONFIG_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_sat_config(commands)
    # Later conversions (SAT <-> diffusers weights, ...) add their own _add_<command>(commands) here.
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_reporting_errors(PROG, lambda: args.run(args))


if __name__ == "__main__":
    main()
