"""The one exception type users see: a bad input, told in one line with its fix."""


class NeftError(ValueError):
    """Raised for bad input. The CLI prints its message on one line and exits with status 2."""
