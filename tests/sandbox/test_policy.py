"""SandboxPolicy parsing, host probing, policy checks and the cgroup tree logic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cbor2
import pytest

from edgeguard.errors import MalformedError, PolicyError
from edgeguard.runtime.sandbox import (
    BEST_EFFORT,
    LAYERS,
    OFF,
    REQUIRED,
    HostCapabilities,
    SandboxPolicy,
    _cgroup,
    _linux,
    check_policy,
    probe_host,
)


def test_default_is_best_effort_everywhere() -> None:
    p = SandboxPolicy()
    assert all(p.mode(layer) == BEST_EFFORT for layer in LAYERS)
    assert p.required_layers() == ()


def test_round_trip_json_and_cbor() -> None:
    p = SandboxPolicy(seccomp=REQUIRED, netns=OFF, memory_max_bytes=None, max_open_files=32)
    d = p.to_dict()
    assert SandboxPolicy.from_dict(json.loads(json.dumps(d))) == p
    assert SandboxPolicy.from_dict(cbor2.loads(cbor2.dumps(d))) == p
    assert p.required_layers() == ("seccomp",)
    assert SandboxPolicy.from_dict({}) == SandboxPolicy()


@pytest.mark.parametrize(
    "bad",
    [
        {"seccomp": "yes"},
        {"seccomp": True},
        {"landlock": None},
        {"unknown": 1},
        {"memory_max_bytes": 1},
        {"memory_max_bytes": "2G"},
        {"memory_max_bytes": True},
        {"max_open_files": 3},
        {"max_open_files": 1.5},
        {"max_open_files": False},
    ],
)
def test_malformed_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(MalformedError):
        SandboxPolicy.from_dict(bad)


def test_not_a_mapping() -> None:
    with pytest.raises(MalformedError):
        SandboxPolicy.from_dict(["seccomp"])  # type: ignore[arg-type]
    with pytest.raises(MalformedError):
        SandboxPolicy().mode("selinux")


def _caps(**kw: object) -> HostCapabilities:
    base = dict(
        kernel="6.1",
        machine="aarch64",
        euid=1000,
        seccomp_kernel=True,
        seccomp_binding=True,
        seccomp_detail="ok",
        landlock_abi=3,
        netns="userns",
        userns=True,
        netns_detail="ok",
        cgroup_path="/sys/fs/cgroup/x",
        cgroup_memory=True,
        cgroup_detail="ok",
        no_new_privs=True,
        nproc_enforced=True,
    )
    base.update(kw)
    return HostCapabilities(**base)  # type: ignore[arg-type]


def test_check_policy_plans_and_refuses() -> None:
    full = _caps()
    assert set(check_policy(SandboxPolicy.all(REQUIRED), full).values()) == {"apply"}
    assert set(check_policy(SandboxPolicy.all(OFF), full).values()) == {"off"}
    poor = _caps(
        seccomp_binding=False,
        seccomp_detail="pyseccomp missing",
        landlock_abi=0,
        netns=None,
        cgroup_memory=False,
    )
    plan = check_policy(SandboxPolicy(), poor)
    assert plan == {
        "netns": "skip",
        "cgroup": "skip",
        "rlimits": "apply",
        "landlock": "skip",
        "seccomp": "skip",
    }
    with pytest.raises(PolicyError) as ei:
        check_policy(SandboxPolicy(seccomp=REQUIRED, landlock=REQUIRED, rlimits=REQUIRED), poor)
    msg = str(ei.value)
    assert "seccomp" in msg and "landlock" in msg and "pyseccomp missing" in msg
    assert "rlimits" not in msg
    # no_new_privs is a precondition of both seccomp and Landlock
    with pytest.raises(PolicyError):
        check_policy(SandboxPolicy(landlock=REQUIRED), _caps(no_new_privs=False))


def test_probe_host_reports_this_kernel(caps: HostCapabilities) -> None:
    d = caps.to_dict()
    json.dumps(d)
    assert set(d["layers"]) == set(LAYERS)
    assert caps.landlock_abi == _linux.landlock_abi()
    status = Path("/proc/self/status").read_text()
    assert caps.seccomp_kernel == ("Seccomp:" in status)
    # probing never changes the probing process
    assert _linux.seccomp_mode() == 0 or "Seccomp:\t2" in status
    assert probe_host().netns == caps.netns


def test_find_own_cgroup2_parsing() -> None:
    mounts = (
        "cgroup /sys/fs/cgroup/memory cgroup rw 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert _cgroup.find_own_cgroup2(mounts, "4:memory:/a\n0::/svc/x\n") == Path(
        "/sys/fs/cgroup/unified/svc/x"
    )
    assert _cgroup.find_own_cgroup2("proc /proc proc rw 0 0\n", "0::/\n") is None
    assert _cgroup.find_own_cgroup2(mounts, "4:memory:/a\n") is None


def test_cgroup_delegation_and_tree(tmp_path: Path) -> None:
    cg = tmp_path / "svc"
    cg.mkdir()
    assert not _cgroup.cgroup_memory_delegated(cg)[0]  # not a cgroup dir
    (cg / "cgroup.controllers").write_text("cpu io memory pids\n")
    (cg / "cgroup.type").write_text("domain\n")
    (cg / "cgroup.subtree_control").write_text("cpu\n")
    ok, why = _cgroup.cgroup_memory_delegated(cg)
    assert not ok and "subtree_control" in why
    (cg / "cgroup.subtree_control").write_text("cpu memory\n")
    assert _cgroup.cgroup_memory_delegated(cg)[0]
    tree = _cgroup.CgroupTree(cg)
    assert (tree.root / "cgroup.subtree_control").read_text() == "+memory"
    leaf = tree.create("m/../evil", memory_max=64 << 20)
    assert leaf.parent == tree.root and "/" not in leaf.name and ".." not in leaf.name
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    tree.attach(leaf, 12345)
    assert (leaf / "cgroup.procs").read_text() == "12345"
    with pytest.raises(PolicyError):
        tree.attach(tmp_path / "no" / "such", 1)


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SandboxPolicy().seccomp = OFF  # type: ignore[misc]
