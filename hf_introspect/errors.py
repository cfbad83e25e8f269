"""User-facing errors.

Every problem the user can fix (bad flag, bad file, missing adapter, full disk...) is raised as
:class:`UserError` with a one-line message that names the problem and the fix. The CLI prints
``error: <message>`` and exits with status 2; ``--debug`` shows the full traceback instead.
"""


class UserError(ValueError):
    """A problem with the user's input or environment, explained in one line.

    Example:
        >>> raise UserError("--batch_size must be >= 1 (got 0); use e.g. --batch_size 4 or 'auto'")
        Traceback (most recent call last):
        ...
        hf_introspect.errors.UserError: --batch_size must be >= 1 (got 0); use e.g. --batch_size 4 or 'auto'
    """
