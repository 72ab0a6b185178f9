"""The one exception type for errors a user can cause.

Bad files, bad prompts, bad checkpoints and bad paths raise :class:`InputError` with a single sentence that says
what is wrong. It subclasses ``ValueError`` so library callers can catch either; the command line prints the
sentence and exits with code 2 (tracebacks only with ``--debug``).
"""


class InputError(ValueError):
    """A problem with something the user supplied (file, prompt, checkpoint, option)."""
