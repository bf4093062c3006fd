"""cogvid-train (the training issue builds it; until then it says so)."""

import sys


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print("usage: cogvid-train model=5b mode=lora data.root=/data/disney\n\nTraining is not built yet.")
        return
    print("cogvid-train: not yet — training lands with the training issue.", file=sys.stderr)
    sys.exit(1)
