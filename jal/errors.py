"""The one error type for bad input: its message names the problem and the fix."""


class JalError(ValueError):
    """Raised for bad user input (paths, files, settings); the CLI prints it on one line."""
