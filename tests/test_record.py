"""Records: equal, hashed and shown by their slots, as the NamedTuples they replace were."""

from __future__ import annotations

import pytest

from remus_netbuf.decide import Claim, Ifb
from remus_netbuf.record import Record


def test_equal_by_value_and_type() -> None:
    assert Claim(3, 0, "ifb0") == Claim(domid=3, devid=0, ifb="ifb0")
    assert Claim(3, 0, "ifb0") != Claim(3, 1, "ifb0")
    assert Claim(3, 0, "ifb0") != (3, 0, "ifb0")  # no longer a tuple

    class Other(Record):
        __slots__ = ("domid", "devid", "ifb")

        def __init__(self) -> None:
            self.domid, self.devid, self.ifb = 3, 0, "ifb0"

    assert Claim(3, 0, "ifb0") != Other()  # same slots and values, another kind of record


def test_hash_follows_equality() -> None:
    assert len({Claim(3, 0, "ifb0"), Claim(3, 0, "ifb0"), Claim(4, 0, "ifb0")}) == 2
    assert hash(Ifb("ifb0", None)) == hash(Ifb("ifb0", None, up=False))


def test_repr_names_every_field_in_order() -> None:
    assert repr(Claim(3, 0, "ifb0")) == "Claim(domid=3, devid=0, ifb='ifb0')"
    assert repr(Ifb("ifb1", "plug", True)) == (
        "Ifb(name='ifb1', root_qdisc='plug', up=True, root_handle=0)"
    )


def test_slots_only() -> None:
    with pytest.raises(AttributeError):
        Claim(3, 0, "ifb0").typo = 1  # type: ignore[attr-defined]
