"""One exception type for bad user input: the CLI prints its message as one line and exits non-zero."""


class MedTransferError(Exception):
    """A problem the user can fix; the message says what, where and how."""
