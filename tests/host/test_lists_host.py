"""`policy list`, `state list` and `dump` on the host kernel: the real commands (written
the fast way, straight from the dump's bytes) print exactly what the general way prints
for the same namespace (the kernel's dump decoded into records, rendered by msgspec and
the table), and what `ip xfrm` lists is all there."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import msgspec
import pytest
from support import ROOT, XFRMWATCH, run_cli, sh

from xfrmwatch.netlink import query
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink.socket import XfrmSocket
from xfrmwatch.output import tables


def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*XFRMWATCH, *args], capture_output=True, timeout=60, cwd=ROOT)


def _populate(netns: str, tmp: Path) -> None:
    """Policies and larval SAs of many shapes, and many entries of some shapes."""
    sh(f"ip netns exec {netns} sysctl -qw net.core.xfrm_acq_expires=600")
    lines = []
    for i in range(300):  # one shape, 300 entries
        lines.append(f"xfrm policy add src 10.1.{i >> 8}.{i & 255}/32 dst 10.200.0.1/32 dir out\n")
    for i in range(40):  # templates, priorities, ports
        lines.append(
            f"xfrm policy add src 10.2.{i}.0/24 dst 10.3.{i}.0/24 proto udp dport {1000 + i} dir in priority {i} "
            f"tmpl src 192.0.2.1 dst 192.0.2.{i + 2} proto esp reqid {i + 1} mode tunnel\n"
        )
    for i in range(20):  # IPv6, marks, blocks, sub policies
        lines.append(
            f"xfrm policy add src 2001:db8:{i:x}::/48 dst 2001:db8:ff::/64 dir fwd action block mark {i} mask 0xff\n"
        )
        lines.append(f"xfrm policy add src 10.4.{i}.0/24 dst 10.5.0.0/16 dir out limit time-hard 9999 limit byte-soft 4096\n")
    for i in range(200):  # larval SAs (the host kernel keeps them without ESP)
        lines.append(
            f"xfrm state allocspi src 10.250.0.1 dst 10.6.{i >> 8}.{i & 255} proto esp mode tunnel "
            f"reqid {i + 1} min 0x{0x1000 + i:x} max 0x{0x1000 + i:x}\n"
        )
    for i in range(10):
        lines.append(
            f"xfrm state allocspi src 2001:db8::1 dst 2001:db8::{i + 2:x} proto esp mode transport "
            f"min 0x{0x2000 + i:x} max 0x{0x2000 + i:x}\n"
        )
    batch = tmp / "batch"
    batch.write_text("".join(lines))
    sh(f"ip -n {netns} -batch {batch} > /dev/null")


async def _general(netns: str, what: str, fmt: str) -> bytes:
    """The general way: each reply datagram decoded into records (query), rendered by
    msgspec or the table (one datagram's rows at a time), as the commands did before."""
    out = io.BytesIO()
    enc = msgspec.json.Encoder()
    kinds = {"policy": ["policy"], "state": ["state"], "dump": ["state", "policy"]}[what]
    if what == "dump" and fmt == "json":
        out.write(b'{"netns":' + enc.encode(netns))
    with XfrmSocket.open(netns) as sock:
        dec = Decoder(netns)
        for kind in kinds:
            stream = query.stream_policies if kind == "policy" else query.stream_sas
            row = tables.policy_row if kind == "policy" else tables.sa_row
            table = (
                (tables.policy_table(out) if kind == "policy" else tables.sa_table(out))
                if fmt == "table"
                else None
            )
            if what == "dump" and fmt == "json":
                out.write(b',"sa":[' if kind == "state" else b'],"policy":[')
            sep = b""
            async for part in stream(sock, dec):
                if table is not None:
                    table.rows([row(r) for r in part])  # type: ignore[arg-type]
                elif what == "dump":
                    for r in part:
                        out.write(sep + enc.encode(r))
                        sep = b","
                else:
                    out.write(enc.encode_lines(part))
            if table is not None:
                table.close("policies" if kind == "policy" else "SAs")
    if what == "dump" and fmt == "json":
        out.write(b"]}\n")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "table"])
@pytest.mark.parametrize("what", ["policy", "state"])
async def test_lists_print_what_the_general_way_prints(
    netns: str, tmp_path: Path, what: str, fmt: str
) -> None:
    """The real command's bytes equal the general way's, for a namespace of many shapes."""
    _populate(netns, tmp_path)
    got = _cli(what, "list", "--netns", netns, "--format", fmt)
    assert got.returncode == 0, got.stderr
    assert got.stderr == b""
    assert await _general(netns, what, fmt) == got.stdout


@pytest.mark.parametrize("fmt", ["json", "table"])
async def test_dump_prints_what_the_general_way_prints(netns: str, tmp_path: Path, fmt: str) -> None:
    """`dump`: SAs then policies, as one JSON object or two tables."""
    _populate(netns, tmp_path)
    got = _cli("dump", "--netns", netns, "--format", fmt)
    assert got.returncode == 0, got.stderr
    assert await _general(netns, "dump", fmt) == got.stdout
    if fmt == "json":
        obj = json.loads(got.stdout)
        assert (netns, 210, 380) == (obj["netns"], len(obj["sa"]), len(obj["policy"]))


def _tunnels(netns: str, tmp: Path) -> int:
    """A gateway's tunnel-mode policies (out, in and fwd of each tunnel, a template to its
    own peer and reqid): IPv4 and IPv6 peers, optional templates, chains of two; how many."""
    lines = []
    for i in range(150):
        net_l, net_r, peer = f"10.16.{i >> 8}.{i & 255}/32", f"10.32.{i >> 8}.{i & 255}/32", f"10.64.{i >> 8}.{i & 255}"
        if i >= 100:  # IPv6 subnets and peers
            net_l, net_r, peer = f"2001:db8:16::{i:x}/128", f"2001:db8:32::{i:x}/128", f"2001:db8:64::{i:x}"
        local = "2001:db8::1" if i >= 100 else "10.0.0.1"
        level = " level use" if i % 7 == 3 else ""  # (in and fwd only: the kernel refuses it out)
        second = f" tmpl src {local} dst {peer} proto ah reqid {i + 5000} mode tunnel" if 50 <= i < 70 else ""
        for d, (s, t) in (("out", (net_l, net_r)), ("in", (net_r, net_l)), ("fwd", (net_r, net_l))):
            src, dst = (local, peer) if d == "out" else (peer, local)
            lines.append(
                f"xfrm policy add src {s} dst {t} dir {d} "
                f"tmpl src {src} dst {dst} proto esp reqid {i + 1} mode tunnel{level if d != 'out' else ''}{second}\n"
            )
    batch = tmp / "tunnels"
    batch.write_text("".join(lines))
    sh(f"ip -n {netns} -batch {batch}")
    return len(lines)


@pytest.mark.parametrize("fmt", ["json", "table"])
async def test_tunnel_mode_policies_print_what_the_general_way_prints(netns: str, tmp_path: Path, fmt: str) -> None:
    """A gateway's tunnel-mode policies (each tunnel's peer and reqid its own; the kernel's
    dump interleaves the directions): the real command prints what the general way prints."""
    n = _tunnels(netns, tmp_path)
    got = _cli("policy", "list", "--netns", netns, "--format", fmt)
    assert got.returncode == 0, got.stderr
    assert await _general(netns, "policy", fmt) == got.stdout
    if fmt == "json":
        pols = [json.loads(line) for line in got.stdout.splitlines()]
        assert n == len(pols) == 450
        assert {f"10.64.0.{i}" for i in range(100)} <= {t["dst"] for p in pols for t in p["tmpl"]}
        assert sum(len(p["tmpl"]) == 2 for p in pols) == 60
        assert sum(t["optional"] for p in pols for t in p["tmpl"]) == 2 * 21


def test_lists_hold_what_ip_lists(netns: str, tmp_path: Path) -> None:
    """Every policy and SA `ip xfrm` lists is in the JSON lines (SPIs, selectors)."""
    _populate(netns, tmp_path)
    pols = [
        json.loads(line)
        for line in run_cli("policy", "list", "--netns", netns, "--format", "json").stdout.splitlines()
    ]
    sas = [
        json.loads(line)
        for line in run_cli("state", "list", "--netns", netns, "--format", "json").stdout.splitlines()
    ]
    ip_pols = sh(f"ip -n {netns} xfrm policy list").stdout
    ip_sas = sh(f"ip -n {netns} xfrm state list").stdout
    assert ip_pols.count("\tdir ") == len(pols) == 380
    assert ip_sas.count(" spi 0x") == len(sas) == 210
    assert {f"spi 0x{0x1000 + i:08x}" for i in range(200)} <= {f"spi {s['spi']}" for s in sas}
    assert all(
        f"src {p['sel']['src']} dst {p['sel']['dst']}" in ip_pols
        for p in pols
        if p["sel"]["family"] == "inet"
    )


def test_filtered_lists(netns: str, tmp_path: Path) -> None:
    """With filters (the general way): only the matching entries."""
    _populate(netns, tmp_path)
    spi = run_cli("state", "list", "--netns", netns, "--spi", "0x1005", "--format", "json")
    assert spi.returncode == 0, spi.stderr
    assert ["0x00001005"] == [json.loads(line)["spi"] for line in spi.stdout.splitlines()]
    fwd = run_cli("policy", "list", "--netns", netns, "--dir", "fwd", "--format", "json")
    assert 20 == len(fwd.stdout.splitlines()) and all('"dir":"fwd"' in line for line in fwd.stdout.splitlines())
    dump = json.loads(run_cli("dump", "--netns", netns, "--dst", "10.200.0.1", "--format", "json").stdout)
    assert (0, 300) == (len(dump["sa"]), len(dump["policy"]))
