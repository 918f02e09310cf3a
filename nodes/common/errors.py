"""The one exception type the pack raises for bad input.

ComfyUI shows an exception's message to the user and keeps serving, so every message says what is
wrong and how to fix it. Pure-torch modules raise it; node glue lets it propagate.
"""


class BoundlessError(ValueError):
    """Bad input, wrong or corrupt checkpoint, or an impossible request."""
