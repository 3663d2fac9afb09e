"""Errors that are the user's to fix: the CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input: an unknown name, a wrong type, a missing or corrupt file."""


class RunStopped(Exception):
    """A run stopped for a reason that is not bad input (divergence, a failed write): exit code 3."""
