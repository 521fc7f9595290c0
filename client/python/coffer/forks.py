"""State a forked child must not share with its parent.

An object that keeps such state (an API key's nonce sequence, a Client's
sealed sessions) calls watch(self) once; in a child made by os.fork() its
_after_fork() method runs before the child goes on. Objects are held weakly:
watching keeps nothing alive.
"""

import os
import weakref

_WATCHED: "weakref.WeakSet" = weakref.WeakSet()


def watch(obj) -> None:
    """Call obj._after_fork() in every child forked while obj is alive."""
    _WATCHED.add(obj)


def _in_child() -> None:
    for obj in list(_WATCHED):
        obj._after_fork()


os.register_at_fork(after_in_child=_in_child)
