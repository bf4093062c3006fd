"""The one exception type for bad input: the command line prints its message as one line and exits 2."""


class CogvidError(Exception):
    """A problem with the user's input (config, file, weights); never a bug in cogvid."""
