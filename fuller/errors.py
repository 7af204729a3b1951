"""Errors that mean "the input is wrong", reported by the CLI as one line rather than a traceback."""


class UserInputError(Exception):
    """Bad input named in the message (a path, a field, expected vs got)."""
