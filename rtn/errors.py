"""The one exception type the command line turns into a one-line error."""


class RtnError(Exception):
    """A bad input or an unavailable source; the message says what to do."""
