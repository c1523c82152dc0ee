"""The one kind of error a user is shown as a single line.

Every bad input in every package (a config key, a missing shard, a foreign tokenizer, an unfinished checkpoint)
raises a subclass of `OdysseyError` with a one-line message; data_prep/guard.py turns it into that line on stderr
and exit 2. It lives in the lowest package so that every package raises it without importing upwards.
"""
from __future__ import annotations


class OdysseyError(Exception):
    """A bad input or state the user can fix: the message is one line that names it. `rank_local`: a failure of
    this rank alone (say its disk), printed by that rank rather than only by rank 0."""

    def __init__(self, message: str = "", rank_local: bool = False):
        super().__init__(message)
        self.rank_local = rank_local
