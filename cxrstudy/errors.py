"""Errors that carry a clear, one-line message for the user.

Entry points catch these and print the message alone (no traceback):
``UsageError`` exits with code 2 (bad parameter, before any work),
``DataError`` with code 1 (the data or a service is not what was expected).
"""


class CxrStudyError(Exception):
    exit_code = 1


class UsageError(CxrStudyError):
    """A parameter value is not one of the allowed values."""

    exit_code = 2


class DataError(CxrStudyError):
    """Input data (a file, a column, a value) or a service is not as expected."""

    exit_code = 1
