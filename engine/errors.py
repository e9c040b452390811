"""The one exception type the engine shows to people.

Anything the user can fix (a wrong path, a broken file, an out-of-range setting) is raised as
`OmnivoxError` with a single-line message saying what is wrong and what to do. Front ends print
the message without a traceback; every other exception is a bug.
"""


class OmnivoxError(Exception):
    """A problem with the user's input or files, described in one actionable line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
