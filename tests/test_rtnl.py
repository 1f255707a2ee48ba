"""The rtnetlink wire format, with no kernel: each request is byte for byte what iproute2 sends.

The expected bytes were captured with ``strace -e write=3`` from iproute2 6.1 (Debian 12) running
the command named beside them, in a namespace where lo is 1, the veth vif9.0 is 3, ifb0 is 4 and
ifb1 is 7; only the sequence number is zeroed. The kernel's answers are built here by hand.
"""

from __future__ import annotations

import errno
import struct

import pytest

from remus_netbuf import rtnl

VIF, IFB0, IFB1 = 3, 4, 7
IPROUTE2 = {
    "tc qdisc add dev ifb0 root plug limit 10000000": (
        rtnl.add_plug(IFB0, 10_000_000),
        "3c000000240005060000000000000000000000000400000000000000ffffffff00000000"
        "09000100706c7567000000000c0002000300000080969800",
    ),
    "tc qdisc add dev ifb0 root handle 5245: plug limit 10000000": (
        rtnl.add_plug(IFB0, 10_000_000, 0x52450000),
        "3c000000240005060000000000000000000000000400000000004552ffffffff00000000"
        "09000100706c7567000000000c0002000300000080969800",
    ),
    "tc filter del dev vif9.0 parent ffff: protocol all pref 10": (
        rtnl.delete_filter(VIF, rtnl.INGRESS_HANDLE, 10, 0x0003),
        "240000002d00050000000000000000000000000003000000000000000000ffff00030a00",
    ),
    "tc filter del dev vif9.0 parent ffff: protocol ip pref 10": (
        rtnl.delete_filter(VIF, rtnl.INGRESS_HANDLE, 10, 0x0800),
        "240000002d00050000000000000000000000000003000000000000000000ffff08000a00",
    ),
    "tc qdisc change dev ifb0 root plug release": (
        rtnl.change_plug(IFB0, 1, 0),
        "3c000000240005000000000000000000000000000400000000000000ffffffff00000000"
        "09000100706c7567000000000c0002000100000000000000",
    ),
    "tc qdisc del dev ifb0 root": (
        rtnl.delete_root(IFB0),
        "24000000250005000000000000000000000000000400000000000000ffffffff00000000",
    ),
    "tc qdisc add dev vif9.0 ingress": (
        rtnl.add_ingress(VIF),
        "3000000024000506000000000000000000000000030000000000fffff1ffffff00000000"
        "0c000100696e677265737300",
    ),
    "tc qdisc del dev vif9.0 ingress": (
        rtnl.delete_ingress(VIF),
        "3000000025000500000000000000000000000000030000000000fffff1ffffff00000000"
        "0c000100696e677265737300",
    ),
    "tc filter add dev vif9.0 parent ffff: protocol all pref 10 u32 match u32 0 0"
    " action mirred egress redirect dev ifb0": (
        rtnl.add_u32_redirect(VIF, 0x0003, 10, IFB0),
        "8c0000002c00050600000000000000000000000003000000000000000000ffff00030a00"
        "08000100753332006000020038000700340001000b0001006d6972726564000024000280"
        "200002000000000000000000040000000000000000000000010000000400000024000500"
        "0100010000000000000000000000000000000000000000000000000000000000",
    ),
    "tc filter add dev vif9.0 parent ffff: protocol ip pref 10 u32 match u32 0 0"
    " action mirred egress redirect dev ifb0": (
        rtnl.add_u32_redirect(VIF, 0x0800, 10, IFB0),
        "8c0000002c00050600000000000000000000000003000000000000000000ffff08000a00"
        "08000100753332006000020038000700340001000b0001006d6972726564000024000280"
        "200002000000000000000000040000000000000000000000010000000400000024000500"
        "0100010000000000000000000000000000000000000000000000000000000000",
    ),
    "ip link add ifb1 type ifb": (
        rtnl.add_ifb("ifb1"),
        "380000001000050600000000000000000000000000000000000000000000000009000300"
        "69666231000000000c0012000700010069666200",
    ),
    "ip link set dev ifb1 up": (
        rtnl.set_up(IFB1, True),
        "2000000010000500000000000000000000000000070000000100000001000000",
    ),
    "ip link set dev ifb1 down": (
        rtnl.set_up(IFB1, False),
        "2000000010000500000000000000000000000000070000000000000001000000",
    ),
    # captured with ifb0 as index 2 (a fresh namespace): the index below is IFB0's
    "ip link set dev ifb0 addrgenmode none": (
        rtnl.set_addr_gen_mode(IFB0, 1),
        "300000001000050000000000000000000000000004000000000000000000000010001a00"
        "0c000a000500080001000000",
    ),
    "ip link set dev ifb0 addrgenmode eui64": (
        rtnl.set_addr_gen_mode(IFB0, 0),
        "300000001000050000000000000000000000000004000000000000000000000010001a00"
        "0c000a000500080000000000",
    ),
    "ip link del ifb1": (
        rtnl.delete_link(IFB1),
        "2000000011000500000000000000000000000000070000000000000000000000",
    ),
}


def ack_of(data: bytes, seq: int) -> tuple[int | None, str]:
    """What Socket.request makes of the NLMSG_ERROR answering ``seq`` in a datagram: (errno,
    the kernel's words), 0 for success; (None, "") when the datagram holds no answer to it."""
    for kind, flags, got, body in rtnl.messages(data):
        if kind == rtnl.NLMSG_ERROR and got == seq:
            return rtnl.error_of(body, flags)
    return None, ""


def wire(request: rtnl.Request) -> bytes:
    """The whole message Socket.request would send for ``request``, with sequence number 0."""
    kind, flags, body = request
    header = rtnl.NLMSGHDR.pack(16 + len(body), kind, flags | rtnl.NLM_F_REQUEST, 0, 0)
    return header + body


@pytest.mark.parametrize("command", IPROUTE2)
def test_each_request_is_what_iproute2_sends(command: str) -> None:
    request, sent = IPROUTE2[command]
    assert wire(request).hex() == sent


def test_attributes_are_read_by_type_without_their_flags() -> None:
    nested = rtnl.nla(rtnl.TCA_ACT_OPTIONS | rtnl.NLA_F_NESTED, rtnl.nla(2, b"\1\2\3"))
    data = b"\0" * 4 + rtnl.nla(1, b"mirred\0") + nested + struct.pack("=HH", 2, 9)  # bad: stop
    found = rtnl.attrs(data, 4)
    assert rtnl.text(found[1]) == "mirred"
    assert rtnl.attrs(found[rtnl.TCA_ACT_OPTIONS]) == {2: b"\1\2\3"}
    assert rtnl.text(None) is None
    assert rtnl.text(b"ifb") == "ifb"  # ip sends some strings without their NUL


def test_a_namespace_name_is_never_a_path() -> None:
    for name in ("../../proc/1/ns/net", "a/b", "..", ""):
        with pytest.raises(OSError) as err:
            rtnl.Socket(name)
        assert err.value.errno == errno.EINVAL


def test_the_kernels_refusal_keeps_its_errno_and_words() -> None:
    assert str(rtnl.RtnlError(errno.ENOENT)) == "[Errno 2] No such file or directory"
    refused = rtnl.RtnlError(errno.EINVAL, "Exclusivity flag on, cannot modify")
    assert (refused.errno, refused.strerror) == (errno.EINVAL, "Exclusivity flag on, cannot modify")


def test_ack_of_reads_success_errors_and_the_kernels_words() -> None:
    request = wire(rtnl.change_plug(3, 1, 0))
    assert len(request) == 60  # nlmsghdr 16, tcmsg 20, kind "plug" 12, tc_plug_qopt 12
    header = struct.Struct("=IHHII")

    def error(seq: int, code: int, flags: int = 0, tlvs: bytes = b"") -> bytes:
        echoed = request[:16] if flags & 0x100 else request
        body = struct.pack("=i", code) + echoed + tlvs
        return header.pack(16 + len(body), 2, flags, seq, 0) + body

    words = b"Specified qdisc not found\0"
    tlv = struct.pack("=HH", 4 + len(words), 1) + words + b"\0" * (-len(words) % 4)
    assert ack_of(error(7, 0), 7) == (0, "")
    assert ack_of(error(8, 0), 7) == (None, "")  # another request's answer
    assert ack_of(error(6, 0) + error(7, -errno.ENOENT), 7) == (errno.ENOENT, "")
    assert ack_of(error(7, -errno.ENOENT, 0x300, tlv), 7) == (errno.ENOENT, words[:-1].decode())
    assert ack_of(error(7, -errno.EINVAL, 0x200, tlv), 7) == (errno.EINVAL, words[:-1].decode())
    assert ack_of(b"", 7) == (None, "")
