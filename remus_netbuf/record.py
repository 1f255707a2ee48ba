"""Small records: the data that crosses module boundaries on the hotplug path.

Start-up is part of every hotplug run (issue 11), so they are neither dataclasses (importing
``dataclasses`` loads ``inspect``, and each class has its methods written and compiled at
import) nor NamedTuples (``typing`` alone is ~3 ms of a teardown with nothing to undo). A
record is a class with ``__slots__`` and an ``__init__`` written out; :class:`Record` gives it
equality, a hash and a repr from its slots. Records are values: nothing changes one once made.
"""

from __future__ import annotations


class Record:
    """Equality, hash and repr over ``__slots__``, in their order, as a NamedTuple's."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({shown})"
