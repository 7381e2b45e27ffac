"""The one kind of failure a user can fix: a problem with an input, the config or the machine.

Each module raises its own subclass (``DataError``, ``HistoryError``, ...) with a message that names
the file or key, what was expected, what was found and what to do. Jobs and the command line report
these as one line (:func:`alexnet_cifar.stages.job`); any other exception is a bug and keeps its
traceback. This module imports nothing, so light jobs can catch these without importing torch.
"""


class UserError(Exception):
    """A problem the message explains and the user can fix (not a bug)."""
