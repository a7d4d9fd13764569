"""The one exception the local stack raises for expected failures."""

from __future__ import annotations


class StackError(Exception):
    """An expected failure (missing tool, port busy, component did not come up).

    The message is meant for a person: the CLI prints it as is, without a traceback,
    so it says what went wrong and where to look (usually a log file).
    """
