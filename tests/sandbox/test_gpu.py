"""The GPU worker profile, the worker's groups and seccomp discovery, on a CPU host.

No GPU here: a fake ``/dev`` tree of regular files stands in for the device nodes (the
executor's ``device_root``), and ``tests/sandbox/gpuprobe.py`` opens them at load the way
the CUDA driver opens its nodes. What is checked is edgeguard's side: which nodes are
chosen, which groups a worker keeps, that the filter allows ``ioctl`` only on the
descriptors held at lockdown, Landlock's rules, and that discovery reports an unlisted
syscall and lets the worker live. Whether CUDA/TensorRT work under the profile is the
one thing these tests cannot say (the ``gpu`` test at the end, never run).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import data
from edgeguard.errors import BackendError, PolicyError, UsageError
from edgeguard.runtime.sandbox import OFF, REQUIRED, HostCapabilities, SandboxPolicy, gpu
from edgeguard.runtime.sandbox._linux import landlock_abi, proc_status
from edgeguard.runtime.sandbox._verify import check_worker
from edgeguard.runtime.sandbox.discover import run_discovery
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec
from edgeguard.runtime.sandbox.identity import ENV_GROUPS, ENV_USER, worker_identity
from edgeguard.runtime.sandbox.seccomp import (
    GPU_ALLOWLIST,
    GPU_CONDITIONAL,
    build_filter,
)
from tests.sandbox.conftest import ROOT, need

PROBE = "tests.sandbox.gpuprobe:make"
DOC = ROOT / "docs" / "isolation.md"
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other groups needs root")


def _pfc(flt: Any) -> str:
    with tempfile.TemporaryFile("w+") as f:
        flt.export_pfc(f)
        f.seek(0)
        return f.read()


def _ioctl_block(pfc: str) -> str:
    """The lines of libseccomp's PFC text that decide ``ioctl`` ('' when it has none)."""
    lines = pfc.splitlines()
    for i, line in enumerate(lines):
        if re.search(r'filter for syscall "ioctl"', line):
            head = lines[i + 1]  # if ($syscall == N)
            indent = len(head) - len(head.lstrip())
            block = [head]
            for nxt in lines[i + 2 :]:
                if len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt)
            return "\n".join(block)
    return ""


@pytest.fixture()
def fake_root() -> Iterator[Path]:
    """A ``/dev`` tree of regular files that ``nobody`` can reach (tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="edgeguard-fakedev-", dir="/tmp"))
    root.chmod(0o755)
    dev = root / "dev"
    (dev / "nvgpu" / "igpu0").mkdir(parents=True)
    for d in (dev, dev / "nvgpu", dev / "nvgpu" / "igpu0"):
        d.chmod(0o755)
    for name in (
        "nvmap",
        "nvhost-ctrl",
        "nvhost-ctrl-gpu",
        "nvhost-dbg-gpu",
        "nvhost-nvdla0",
        "nvhost-ctrl-nvdla1",
        "nvidiactl",
        "nvidia0",
        "nvgpu/igpu0/ctrl",
        "other",
    ):
        (dev / name).touch()
        (dev / name).chmod(0o666)
    (dev / "nvhost-gpu").mkdir()  # not a file: never selected
    (dev / "nvhost-as-gpu").symlink_to(dev / "missing")  # dangling: never selected
    yield root
    shutil.rmtree(root)


# -- the filter ----------------------------------------------------------------------------


def test_the_gpu_filter_allows_ioctl_only_on_the_device_descriptors() -> None:
    block = _ioctl_block(_pfc(build_filter(ctl_fd=3, pid=1, profile="gpu", device_fds=(7, 9))))
    assert block, "no ioctl rule in the GPU filter"
    assert sorted(int(v) for v in re.findall(r"\$a0\.lo32 == (\d+)", block)) == [7, 9]
    allows = [ln for ln in block.splitlines() if "action ALLOW" in ln]
    assert len(allows) == 2
    compare = min(len(ln) - len(ln.lstrip()) for ln in block.splitlines() if "$a0.lo32" in ln)
    assert all(len(ln) - len(ln.lstrip()) > compare for ln in allows)  # each under a compare


def test_without_device_descriptors_there_is_no_ioctl_at_all() -> None:
    assert _ioctl_block(_pfc(build_filter(ctl_fd=3, pid=1, profile="gpu"))) == ""
    assert _ioctl_block(_pfc(build_filter(ctl_fd=3, pid=1))) == ""
    assert "memfd_create" not in _pfc(build_filter(ctl_fd=3, pid=1))  # CPU: no GPU extras


@pytest.mark.parametrize(
    "kwargs",
    [
        {"profile": "gpu", "device_fds": (3,)},  # the control socket
        {"profile": "gpu", "device_fds": (2,)},  # stderr
        {"profile": "cpu", "device_fds": (7,)},  # descriptors without the GPU profile
        {"profile": "gpu", "device_fds": (True,)},
        {"profile": "tpu"},
        {"kill_action": "allow"},
    ],
)
def test_bad_filter_requests_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_filter(ctl_fd=3, pid=1, **kwargs)


def test_every_gpu_entry_is_documented() -> None:
    text = DOC.read_text()
    for name in (*GPU_ALLOWLIST, *GPU_CONDITIONAL):
        assert f"| `{name}` |" in text, f"{name} is not documented in {DOC.name}"
    for globs in gpu.DEVICE_FAMILIES.values():
        for g in globs:
            assert f"`{g.pattern}`" in text, g.pattern
    for node in gpu.EXCLUDED_NODES:
        assert f"`{node}`" in text, node
    assert "never run on a Jetson" in text.lower() or "never run on a jetson" in text.lower()


# -- device nodes, descriptors, groups -----------------------------------------------------


def test_device_nodes_are_chosen_from_the_tree_per_family(fake_root: Path) -> None:
    dev = str(fake_root / "dev")
    every = gpu.select_device_nodes(root=fake_root)
    assert every == tuple(
        sorted(
            f"{dev}/{n}"
            for n in (
                "nvmap",
                "nvhost-ctrl",
                "nvhost-ctrl-gpu",
                "nvhost-nvdla0",
                "nvhost-ctrl-nvdla1",
                "nvidiactl",
                "nvidia0",
                "nvgpu/igpu0/ctrl",
            )
        )
    )
    assert f"{dev}/nvhost-dbg-gpu" not in every  # the debugger stays closed
    nano = gpu.select_device_nodes(root=fake_root, families=gpu.families_for("Maxwell"))
    assert not any("nvdla" in n or "nvidia" in n for n in nano)
    assert f"{dev}/nvmap" in nano
    assert gpu.families_for("Quantum") == tuple(gpu.DEVICE_FAMILIES)  # unknown: all
    with pytest.raises(KeyError):
        gpu.select_device_nodes(root=fake_root, families=("nope",))


def test_regular_files_count_only_in_a_fake_tree(tmp_path: Path) -> None:
    # below the real root only character devices count; this host has no GPU nodes
    assert all(Path(n).is_char_device() for n in gpu.select_device_nodes())


def test_device_descriptors_are_found_by_target(fake_root: Path, tmp_path: Path) -> None:
    nodes = gpu.select_device_nodes(root=fake_root)
    mine = os.open(nodes[0], os.O_RDWR)
    other = os.open(fake_root / "dev" / "other", os.O_RDWR)
    try:
        fds = gpu.device_fds(nodes)
        assert mine in fds and other not in fds
    finally:
        os.close(mine)
        os.close(other)
    # descriptors the driver creates itself, by their readlink target
    proc = tmp_path / "fd"
    proc.mkdir()
    for n, target in {
        "5": "anon_inode:sync_file",
        "6": "anon_inode:[eventfd]",
        "7": nodes[1],
        "8": "socket:[1234]",
        "9": "anon_inode:nvhost-gpu-fd",
    }.items():
        (proc / n).symlink_to(target)
    assert gpu.device_fds(nodes, proc_fd=str(proc)) == (5, 7, 9)


@ROOT_ONLY
def test_gpu_groups_are_the_groups_that_own_the_nodes(fake_root: Path) -> None:
    dev = fake_root / "dev"
    os.chown(dev / "nvmap", 0, 44)
    (dev / "nvmap").chmod(0o660)
    os.chown(dev / "nvhost-ctrl", 0, 108)
    (dev / "nvhost-ctrl").chmod(0o660)
    os.chown(dev / "nvhost-ctrl-gpu", 0, 1234)
    (dev / "nvhost-ctrl-gpu").chmod(0o640)  # the group may not write: not needed
    nodes = gpu.select_device_nodes(root=fake_root)
    assert gpu.device_groups(nodes) == (44, 108)  # root's group (the rest) never
    ident = worker_identity(env={})
    assert ident.groups_for(nodes) == (44, 108)
    assert ident.groups_for(None) == ()  # a CPU member keeps no group
    assert worker_identity(groups=["video"], env={}).groups_for(nodes) == (44,)
    assert worker_identity(groups=[], env={}).groups_for(nodes) == ()


def test_the_worker_identity_comes_from_options_then_environment() -> None:
    assert worker_identity(env={}).uid == 65534
    ident = worker_identity(env={ENV_USER: "65533", ENV_GROUPS: "video,108"})
    assert (ident.uid, ident.gpu_groups) == (65533, (44, 108))
    assert worker_identity(user="65534", groups=["44"], env={ENV_GROUPS: "108"}).gpu_groups == (44,)
    for bad in ({"user": "root"}, {"user": "0"}, {"groups": ["root"]}, {"groups": ["0"]}):
        with pytest.raises(ValueError, match="root"):
            worker_identity(env={}, **bad)
    with pytest.raises(ValueError, match="unknown group"):
        worker_identity(groups=["no-such-group-here"], env={})
    with pytest.raises(ValueError, match="unknown user"):
        worker_identity(user="no-such-user-here", env={})


def test_the_executor_refuses_a_root_worker_user(caps: HostCapabilities) -> None:
    with pytest.raises(UsageError, match="root"):
        ProcessMemberExecutor(
            {"a": WorkerSpec(b"m")}, policy=SandboxPolicy(), caps=caps, worker_user="root"
        )


@ROOT_ONLY
def test_the_supervisor_checks_the_exact_groups() -> None:
    proc = subprocess.Popen(
        ["sleep", "30"], user=65534, group=65534, extra_groups=[44], stdin=subprocess.DEVNULL
    )
    try:
        kw: dict[str, Any] = {
            "plan": {},
            "required": (),
            "reported": {},
            "max_open_files": 64,
            "started_by_root": True,
        }
        assert not [p for p in check_worker(proc.pid, groups=(44,), **kw).problems if "Groups" in p]
        assert [p for p in check_worker(proc.pid, **kw).problems if "Groups" in p]
        assert [p for p in check_worker(proc.pid, groups=(44, 108), **kw).problems if "Groups" in p]
    finally:
        proc.kill()
        proc.wait()


# -- Landlock with rules -------------------------------------------------------------------

_LANDLOCK_CHILD = """
import json, os, sys
from edgeguard.runtime.sandbox import _linux
allowed, missing, other = sys.argv[1:4]
_linux.set_no_new_privs()
res = _linux.landlock_restrict_self(_linux.landlock_abi(), rules=[allowed, missing])
out = {"paths": res.paths, "missing": res.missing}
for key, path in (("allowed", allowed), ("other", other)):
    try:
        os.close(os.open(path, os.O_RDWR))
        out[key] = 0
    except OSError as exc:
        out[key] = exc.errno
print(json.dumps(out))
"""


def test_landlock_rules_are_added_only_for_existing_paths(fake_root: Path) -> None:
    if landlock_abi() < 1:
        pytest.skip("Landlock is unavailable on this kernel")
    dev = fake_root / "dev"
    allowed, missing, other = str(dev / "nvmap"), str(dev / "nvhost-gone"), str(dev / "other")
    out = subprocess.run(
        [sys.executable, "-c", _LANDLOCK_CHILD, allowed, missing, other],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=30,
    )
    got = json.loads(out.stdout)
    assert got == {
        "paths": [allowed],
        "missing": [missing],
        "allowed": 0,
        "other": errno.EACCES,
    }


# -- GPU members in workers (CPU host, fake nodes) -----------------------------------------


def _gpu_spec(fake_root: Path, action: str, **opts: Any) -> WorkerSpec:
    return WorkerSpec(
        b"m" * 10,
        fmt="test",
        loader=PROBE,
        python_path=(str(ROOT),),
        options={"gpu": 0, "action": action, "open": [str(fake_root / "dev" / "nvmap")], **opts},
    )


def _call(ex: ProcessMemberExecutor) -> dict[str, np.ndarray]:
    call = ex.submit("g", {"x": np.zeros(1, np.float32)})
    assert call.wait(30)
    return call.result()


def test_a_gpu_worker_may_ioctl_its_device_descriptor(
    caps: HostCapabilities, fake_root: Path
) -> None:
    need(caps, "seccomp")
    with ProcessMemberExecutor(
        {"g": _gpu_spec(fake_root, "ioctl_device")},
        policy=SandboxPolicy(seccomp=REQUIRED),
        caps=caps,
        device_root=fake_root,
    ) as ex:
        assert _call(ex)["y"].tolist() == [0]
        layers = ex.status("g").layers
        assert "GPU profile, ioctl on 1 device descriptor(s)" in layers["seccomp"]
        assert "after the model load" in layers["seccomp"]


def test_a_gpu_worker_dies_for_ioctl_on_another_descriptor(
    caps: HostCapabilities, fake_root: Path
) -> None:
    need(caps, "seccomp")
    with (
        ProcessMemberExecutor(
            {"g": _gpu_spec(fake_root, "ioctl_stderr")},
            policy=SandboxPolicy(seccomp=REQUIRED),
            caps=caps,
            device_root=fake_root,
            max_restarts=0,
        ) as ex,
        pytest.raises(BackendError, match="SIGSYS"),
    ):
        _call(ex)


def test_a_cpu_worker_under_the_gpu_landlock_rules_opens_only_the_nodes(
    caps: HostCapabilities, fake_root: Path
) -> None:
    need(caps, "landlock")
    dev = fake_root / "dev"
    tries = [str(dev / n) for n in ("nvmap", "nvhost-ctrl", "other", "nvhost-dbg-gpu")]
    with ProcessMemberExecutor(
        {"g": _gpu_spec(fake_root, "open", **{"try": tries})},
        policy=SandboxPolicy(seccomp=OFF, landlock=REQUIRED),  # openat: Landlock decides
        caps=caps,
        device_root=fake_root,
    ) as ex:
        assert _call(ex)["y"].tolist() == [0, 0, errno.EACCES, errno.EACCES]
        assert "rules for 8 device node(s)" in ex.status("g").layers["landlock"]


@ROOT_ONLY
def test_a_gpu_worker_keeps_the_node_groups_and_no_other(
    caps: HostCapabilities, fake_root: Path
) -> None:
    need(caps, "seccomp")
    node = fake_root / "dev" / "nvmap"
    os.chown(node, 0, 44)
    node.chmod(0o660)  # nobody may open it only as a member of group 44
    with ProcessMemberExecutor(
        {"g": _gpu_spec(fake_root, "ioctl_device")},
        policy=SandboxPolicy(seccomp=REQUIRED),
        caps=caps,
        device_root=fake_root,
    ) as ex:
        assert _call(ex)["y"].tolist() == [0]
        pid = ex.status("g").pid
        assert pid is not None
        assert proc_status(pid)["Groups"] == "44"
        assert ex._slots["g"].verified["groups"] == "44"  # what the supervisor read
    # without the group the node cannot be opened: the load fails
    with pytest.raises(BackendError, match="Permission denied"):
        ProcessMemberExecutor(
            {"g": _gpu_spec(fake_root, "ioctl_device")},
            policy=SandboxPolicy(seccomp=REQUIRED),
            caps=caps,
            device_root=fake_root,
            worker_groups=[],
        )


def test_a_cpu_member_keeps_no_group_even_when_groups_are_configured(
    caps: HostCapabilities,
) -> None:
    spec = WorkerSpec(b"m" * 10, fmt="test", loader=PROBE, python_path=(str(ROOT),))
    with ProcessMemberExecutor(
        {"g": spec}, policy=SandboxPolicy(), caps=caps, worker_groups=["video"]
    ) as ex:
        assert _call(ex)["y"].tolist() == [0.0]
        pid = ex.status("g").pid
        assert pid is not None
        if os.geteuid() == 0:
            assert proc_status(pid)["Groups"] == ""
        assert "GPU" not in ex.status("g").layers.get("seccomp", "")


# -- discovery -----------------------------------------------------------------------------


def test_discovery_reports_an_unlisted_syscall_and_the_worker_lives(
    caps: HostCapabilities,
) -> None:
    need(caps, "seccomp")
    spec = WorkerSpec(
        b"m" * 10,
        fmt="test",
        loader=PROBE,
        python_path=(str(ROOT),),
        options={"action": "getppid"},
    )
    report = run_discovery(spec, caps=caps, requests=3)
    assert report.worker_alive and report.requests == 3 and report.errors == ()
    (seen,) = [s for s in report.unlisted if s.name == "getppid"]
    assert seen.listed == "no" and "serve" in seen.phases
    assert seen.count >= 3  # once per request (and per warm-up round)
    assert "discovery" in report.layers["seccomp"]
    assert json.loads(json.dumps(report.to_dict()))["unlisted"]  # what an owner sends back
    # the same member without the unlisted call: nothing to report
    quiet = WorkerSpec(b"m" * 10, fmt="test", loader=PROBE, python_path=(str(ROOT),))
    assert run_discovery(quiet, caps=caps).names == ()


def test_discovery_reports_a_listed_call_whose_condition_fails(
    caps: HostCapabilities, fake_root: Path
) -> None:
    need(caps, "seccomp")
    report = run_discovery(_gpu_spec(fake_root, "ioctl_stderr"), caps=caps, device_root=fake_root)
    assert report.profile == "gpu" and report.lockdown == "after the model load"
    assert report.worker_alive and report.requests == 3
    (seen,) = [s for s in report.unlisted if s.name == "ioctl"]
    assert seen.listed.startswith("GPU profile, condition not met")
    assert all(ex[0] == 2 for ex in seen.examples)  # on stderr, never the device descriptor


def test_discovery_covers_threads_that_existed_before_lockdown(caps: HostCapabilities) -> None:
    need(caps, "seccomp")
    spec = WorkerSpec(
        b"m" * 10,
        fmt="test",
        loader=PROBE,
        python_path=(str(ROOT),),
        options={"gpu": 0, "action": "helper", "helper": True},  # CUDA-like helper thread
    )
    report = run_discovery(spec, caps=caps, requests=3)
    assert report.worker_alive and report.requests == 3
    (seen,) = [s for s in report.unlisted if s.name == "getppid"]  # made by the helper
    assert seen.phases == ("serve",) and seen.count == 3
    assert "earlier thread(s) not covered" in report.layers["landlock"]
    assert "getppid" in report.text()


def test_discovery_on_the_digits_model_sees_nothing_unlisted(caps: HostCapabilities) -> None:
    need(caps, "seccomp")
    report = run_discovery(WorkerSpec(data.model_bytes("digits_mlp")), caps=caps, requests=5)
    assert report.worker_alive and report.requests == 5
    assert report.unlisted == (), report.to_dict()["unlisted"]


def test_discovery_refuses_without_seccomp(caps: HostCapabilities) -> None:
    spec = WorkerSpec(b"m" * 10, fmt="test", loader=PROBE, python_path=(str(ROOT),))
    with pytest.raises(PolicyError, match="seccomp discovery needs the seccomp layer"):
        run_discovery(spec, caps=caps, policy=SandboxPolicy(seccomp=OFF))


# -- on a GPU (never run here) -------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.trt
def test_discovery_on_a_real_gpu_member(caps: HostCapabilities) -> None:
    engine = os.environ.get("EDGEGUARD_TEST_TRT_ENGINE")
    if not gpu.select_device_nodes() or not engine:
        pytest.skip(
            "needs NVIDIA device nodes and EDGEGUARD_TEST_TRT_ENGINE=<engine file>; "
            "the GPU profile has never run on a GPU"
        )
    report = run_discovery(
        WorkerSpec(Path(engine).read_bytes(), fmt="trt-engine", options={}), caps=caps
    )
    print(json.dumps(report.to_dict(), indent=1))
    assert report.worker_alive and report.requests == 3


def test_new_nvgpu_naming_keeps_the_debugger_trace_and_scheduler_nodes_closed(
    tmp_path: Path,
) -> None:
    d = tmp_path / "dev" / "nvgpu" / "igpu0"
    d.mkdir(parents=True)
    for n in ("ctrl", "as", "channel", "tsg", "dbg", "ctxsw", "sched", "nvsched", "prof"):
        (d / n).write_text("")
    (tmp_path / "dev" / "nvhost-dbg-gpu").write_text("")
    got = {Path(p).name for p in gpu.select_device_nodes(root=tmp_path, families=["nvgpu"])}
    assert "nvhost-dbg-gpu" not in got
    assert not {"dbg", "ctxsw", "sched", "nvsched"} & got, got
    assert {"ctrl", "as", "channel", "tsg"} <= got
