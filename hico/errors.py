"""The one exception type for mistakes a user can make (paths, files, config values, uploads).

The CLI and the app print its message as one sentence and exit non-zero; anything else
that raises is a bug and keeps its traceback.
"""


class HiCoError(Exception):
    """A user-facing error whose message is one sentence naming the file or key at fault."""
