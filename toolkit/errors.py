"""The one exception type for bad input (files, recipes, command lines).

Anything raised as `ToolkitError` is printed by the CLI as a one-line `error: ...` message naming the
file/line/key at fault, and the process exits non-zero without a traceback. Every other exception is a bug
and keeps its traceback.
"""


class ToolkitError(Exception):
    """Bad input the user can fix; the message must name the file, line or key and say what is wrong."""


class ConfigError(ToolkitError):
    """A recipe or override is invalid (unknown key, wrong type, value out of range)."""


class DataError(ToolkitError):
    """A source sequence, shard or manifest is malformed."""
