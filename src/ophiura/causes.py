"""What went wrong, in words, for log lines and error messages built from an exception.

`f"{exc}"` is empty for many exceptions (`TimeoutError()` from `asyncio.timeout`,
`ConnectionResetError()`, `asyncio.IncompleteReadError` aside), and `exc or type(exc).__name__`
does not help: an exception is always true, so the type name never appeared and a failure was
logged as `SE se1: connection lost: poll: ` with no cause at all. `describe` always names one.
"""

from __future__ import annotations


def describe(exc: BaseException, timeout: float | None = None) -> str:
    """The exception's message, or its type when the message is empty; for a timeout, also the
    bound that expired (`timeout`, in seconds) so the line says how long was waited."""
    text = str(exc).strip()
    if not text:
        text = type(exc).__name__
    if timeout is not None and isinstance(exc, TimeoutError):
        text += f" (no answer within {timeout:g} s)"
    return text
