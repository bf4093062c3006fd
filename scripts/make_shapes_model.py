"""Train the shapes model from nothing (data, tokenizer + T5, VAE, latents, DiT) and ship it into the package; or,
with --lora, the LoRA that teaches the shipped model the word "cyan".

    python scripts/make_shapes_model.py outputs/shapes-model          # `make shapes-model`
    python scripts/make_shapes_model.py outputs/shapes-model --redo dit
    python scripts/make_shapes_model.py --lora outputs/shapes-lora    # `make shapes-lora`

Stages and settings: cogvid/shapes/recipe.py and cogvid/shapes/lora_recipe.py. Finished stages are recorded in
OUT/recipe.json and skipped on a rerun; the last stage writes cogvid/weights/shapes/ (what `cogvid-sample
model=shapes` loads) and its scale factor into conf/model/shapes.yaml, or the adapter into
cogvid/weights/shapes/lora-cyan/.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cogvid.shapes.lora_recipe import LORA_STAGES, LoraRecipe
from cogvid.shapes.recipe import STAGES, Recipe
from cogvid.utils.errors import CogvidError


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineErrors(prog="make_shapes_model.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="work folder (data, VAE, latents, DiT runs); reused by a rerun")
    stages = list(dict.fromkeys([*STAGES, *LORA_STAGES]))
    parser.add_argument("--lora", action="store_true", help="the cyan LoRA on the shipped model (make shapes-lora)")
    parser.add_argument("--redo", choices=stages, help="run this stage and every later one again")
    parser.add_argument("--until", choices=stages, help="stop after this stage")
    parser.add_argument("--workers", type=int, default=2, help="processes writing the clips (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        recipe = (LoraRecipe if args.lora else Recipe)(args.out, workers=args.workers)
        recipe.run(redo=args.redo, until=args.until)
    except CogvidError as ex:
        print(f"make_shapes_model.py: error: {ex}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
