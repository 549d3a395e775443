"""One exception type for every user-facing error: the CLI prints it as one line."""

import click


class XnorpipeError(click.ClickException):
    """A user-facing error (bad input, missing data, unsupported option).

    Subclassing ClickException makes click print `Error: <message>` and exit 1
    without a traceback; library callers can catch it like any exception.
    """

    exit_code = 1
