"""The one exception type for bad input: the command line prints its message as one line and exits 2."""


class CogvidError(Exception):
    """A problem with the user's input (config, file, weights); never a bug in cogvid."""


def first_few(items: list[str], n: int = 3) -> str:
    """The first `n` items joined by commas, with ", ..." when there are more: key lists in one-line messages."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
