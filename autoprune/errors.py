"""Error types of autoprune.

A user's mistake (bad config, unknown name, unreadable file) raises an
:class:`AutopruneError` subclass whose message names the culprit and what is
allowed; the CLI prints it as one line and exits with code 2. Anything else is a
bug and keeps its traceback.
"""


class AutopruneError(Exception):
    """Base class for errors caused by user input or environment."""


class ConfigError(AutopruneError):
    """A configuration value (file, CLI argument or API argument) is invalid."""


class DataError(AutopruneError):
    """A data set cannot be found or read."""


class ModelError(AutopruneError):
    """A model cannot be built, loaded or analysed."""


class PolicyError(AutopruneError):
    """A pruning policy does not fit the model it is applied to."""


class BudgetError(AutopruneError):
    """A budget cannot be met with the allowed pruning ratios."""


def one_line(text: object, limit: int | None = 300) -> str:
    """``text`` (any object, an exception included) as one line of at most ``limit`` characters.

    Never fails: an empty or whitespace-only message becomes ``""``; callers that show an
    exception use :func:`describe` to get its type name instead.
    """
    flat = " ".join(str(text).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return flat


def describe(e: BaseException, limit: int | None = 300) -> str:
    """An exception as one line: its message, or its type name when the message is empty."""
    return one_line(getattr(e, "message", None) or e, limit) or type(e).__name__
