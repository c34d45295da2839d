"""Device profiles: what each supported edge device is and can run (data layer).

One TOML file per profile, named by the profile id, lives in the repository's
``devices/`` directory; the wheel ships the same files as ``edgeguard/_profiles/``.
A profile records the facts the build and runtime layers decide on: CPU
architectures, GPU compute capability (``sm``), DLA cores, memory, the JetPack /
CUDA / TensorRT line and the precisions the device runs. Sources for every value
are in ``docs/devices.md``.

Files are validated strictly: unknown keys, missing keys and wrong types are
refused with :class:`~edgeguard.errors.MalformedError`, and the file's ``id`` must
equal its file name. :func:`profile_digest` hashes the exact file bytes, so an
attestation can state which profile a device was checked against.

Schema 1 (example: ``devices/jetson-orin-nx.toml``)::

    schema = 1
    id = "jetson-orin-nx"            # == file name, [a-z0-9-]
    name = "NVIDIA Jetson Orin NX (16 GB)"
    cpu_arch = ["aarch64"]           # platform.machine() values the profile covers
    cpu = "8-core Arm Cortex-A78AE"
    dla_cores = 2
    memory_gb = 16
    memory_bandwidth_gbps = 102.4    # optional
    precisions = ["fp32", "fp16", "bf16", "int8"]
    dla_precisions = ["fp16", "int8"]  # empty when dla_cores == 0
    backends = ["onnx", "trt-engine"]  # bundle member formats the device can run
    notes = "..."

    [gpu]                            # optional: absent on CPU-only profiles
    architecture = "Ampere"
    compute_capability = "8.7"
    sm = 87                          # == major * 10 + minor
    cuda_cores = 1024

    [software]                       # optional; keys optional (absent: not applicable)
    jetpack = "6.2"
    cuda = "12.6"
    tensorrt = "10.3"
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import sys
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from edgeguard._strict import Table, as_float, as_int, as_list, as_str, fail
from edgeguard.errors import MalformedError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "DeviceProfile",
    "GpuInfo",
    "SoftwareStack",
    "list_profiles",
    "load_profile",
    "profile_digest",
    "profiles_dir",
]

SCHEMA_VERSION = 1
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "fp8", "fp4")
DLA_PRECISIONS: tuple[str, ...] = ("fp16", "int8")
BACKENDS: tuple[str, ...] = ("onnx", "trt-engine")
CPU_ARCHES: tuple[str, ...] = ("aarch64", "x86_64")
MAX_PROFILE_BYTES = 64 * 1024
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_CC = re.compile(r"([1-9][0-9]?)\.([0-9])")
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*(\.x)?")

Dir = Any  # a pathlib.Path or an importlib.resources Traversable


@dataclass(frozen=True)
class GpuInfo:
    """The integrated GPU.

    Attributes:
        architecture: Marketing architecture name ("Ampere").
        compute_capability: ``"major.minor"``, for example ``"8.7"``.
        sm: The same as an integer, ``major * 10 + minor`` (87), as in ``sm_87``.
        cuda_cores: Number of CUDA cores.
    """

    architecture: str
    compute_capability: str
    sm: int
    cuda_cores: int


@dataclass(frozen=True)
class SoftwareStack:
    """The newest JetPack line NVIDIA supports on the device (None: not applicable).

    Attributes:
        jetpack: JetPack version line, for example ``"6.2"`` or ``"4.6.x"``.
        cuda: CUDA toolkit version of that line.
        tensorrt: TensorRT version of that line.
    """

    jetpack: str | None = None
    cuda: str | None = None
    tensorrt: str | None = None


@dataclass(frozen=True)
class DeviceProfile:
    """One device profile, validated. See the module docstring for the schema."""

    id: str
    name: str
    cpu_arch: tuple[str, ...]
    cpu: str
    gpu: GpuInfo | None
    dla_cores: int
    memory_gb: float
    memory_bandwidth_gbps: float | None
    software: SoftwareStack
    precisions: tuple[str, ...]
    dla_precisions: tuple[str, ...]
    backends: tuple[str, ...]
    notes: str

    @property
    def has_gpu(self) -> bool:
        """Whether the device has a CUDA GPU."""
        return self.gpu is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with the same keys as the TOML file (absent values are None)."""
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "name": self.name,
            "cpu_arch": list(self.cpu_arch),
            "cpu": self.cpu,
            "gpu": None
            if self.gpu is None
            else {
                "architecture": self.gpu.architecture,
                "compute_capability": self.gpu.compute_capability,
                "sm": self.gpu.sm,
                "cuda_cores": self.gpu.cuda_cores,
            },
            "dla_cores": self.dla_cores,
            "memory_gb": self.memory_gb,
            "memory_bandwidth_gbps": self.memory_bandwidth_gbps,
            "software": {
                "jetpack": self.software.jetpack,
                "cuda": self.software.cuda,
                "tensorrt": self.software.tensorrt,
            },
            "precisions": list(self.precisions),
            "dla_precisions": list(self.dla_precisions),
            "backends": list(self.backends),
            "notes": self.notes,
        }


# -- locating files ---------------------------------------------------------------------


def profiles_dir() -> Dir:
    """The directory holding the profile files.

    ``edgeguard/_profiles`` inside an installed wheel, else the repository's
    ``devices/`` next to the package (editable install / source checkout).

    Raises:
        UsageError: Neither location exists.
    """
    packaged: Traversable = resources.files("edgeguard") / "_profiles"
    if packaged.is_dir():
        return packaged
    repo = pathlib.Path(__file__).resolve().parent.parent / "devices"
    if repo.is_dir():
        return repo
    raise UsageError("no device profiles found (neither edgeguard/_profiles nor devices/)")


def list_profiles(*, directory: Dir | None = None) -> list[str]:
    """Sorted ids of all profiles (file names without ``.toml``).

    Args:
        directory: Look here instead of :func:`profiles_dir` (tests, custom fleets).
    """
    base = profiles_dir() if directory is None else directory
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in base.iterdir()
        if entry.name.endswith(".toml") and _NAME.fullmatch(entry.name.removesuffix(".toml"))
    )


def _read(name: str, directory: Dir | None) -> bytes:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"invalid device profile name {name!r}")
    base = profiles_dir() if directory is None else directory
    known = list_profiles(directory=base)
    if name not in known:
        raise UsageError(
            f"unknown device profile {name!r}", hint=f"known profiles: {', '.join(known)}"
        )
    raw: bytes = (base / f"{name}.toml").read_bytes()
    if len(raw) > MAX_PROFILE_BYTES:
        raise MalformedError(f"device profile {name!r} is larger than {MAX_PROFILE_BYTES} bytes")
    return raw


def profile_digest(name: str, *, directory: Dir | None = None) -> str:
    """Self-describing digest of the profile file's exact bytes: ``"sha256:<hex>"``.

    Raises:
        UsageError: Unknown profile name.
    """
    return "sha256:" + hashlib.sha256(_read(name, directory)).hexdigest()


def load_profile(name: str, *, directory: Dir | None = None) -> DeviceProfile:
    """Load and validate one profile.

    Args:
        name: Profile id, for example ``"jetson-orin-nx"``.
        directory: Look here instead of :func:`profiles_dir`.

    Raises:
        UsageError: Unknown or invalid profile name (the hint lists known names).
        MalformedError: The file is not valid TOML or does not follow schema 1.
    """
    return parse_profile(_read(name, directory), expected_id=name)


# -- parsing ----------------------------------------------------------------------------


def parse_profile(raw: bytes, *, expected_id: str | None = None) -> DeviceProfile:
    """Parse and validate profile bytes (no file access).

    Args:
        raw: The TOML file contents.
        expected_id: If given, the ``id`` the file must declare (its file name).

    Raises:
        MalformedError: Not UTF-8 TOML, or a schema violation.
    """
    label = expected_id or "<profile>"
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MalformedError(f"device profile {label!r} is not valid TOML: {exc}") from exc
    w = f"device profile {label!r}"
    r = Table(doc, w)
    schema = as_int(r.required("schema"), r.at("schema"))
    if schema != SCHEMA_VERSION:
        raise fail(w, f"unsupported schema {schema}")
    pid = as_str(r.required("id"), r.at("id"), max_len=64)
    if not _NAME.fullmatch(pid) or (expected_id is not None and pid != expected_id):
        raise fail(w, f"id {pid!r} does not match the file name")
    gpu_table = r.optional("gpu")
    sw_table = r.optional("software", {})
    bandwidth = r.optional("memory_bandwidth_gbps")
    profile = DeviceProfile(
        id=pid,
        name=_text(r, "name"),
        cpu_arch=_names(r, "cpu_arch", CPU_ARCHES, nonempty=True),
        cpu=_text(r, "cpu"),
        gpu=None if gpu_table is None else _gpu(Table(gpu_table, r.at("gpu"))),
        dla_cores=as_int(r.required("dla_cores"), r.at("dla_cores")),
        memory_gb=as_float(r.required("memory_gb"), r.at("memory_gb")),
        memory_bandwidth_gbps=None
        if bandwidth is None
        else as_float(bandwidth, r.at("memory_bandwidth_gbps")),
        software=_software(Table(sw_table, r.at("software"))),
        precisions=_names(r, "precisions", PRECISIONS, nonempty=True),
        dla_precisions=_names(r, "dla_precisions", DLA_PRECISIONS),
        backends=_names(r, "backends", BACKENDS, nonempty=True),
        notes=as_str(r.required("notes"), r.at("notes"), nonempty=False),
    )
    r.done()
    _check_consistency(profile, label)
    return profile


def _text(r: Table, key: str) -> str:
    value = as_str(r.required(key), r.at(key))
    if not value.strip():
        raise fail(r.at(key), "must not be blank")
    return value


def _names(
    r: Table, key: str, allowed: tuple[str, ...], *, nonempty: bool = False
) -> tuple[str, ...]:
    where = r.at(key)
    values = [
        as_str(v, where, choices=allowed)
        for v in as_list(r.required(key), where, min_len=1 if nonempty else 0, max_len=64)
    ]
    if len(set(values)) != len(values):
        raise fail(where, "has duplicate entries")
    return tuple(values)


def _gpu(r: Table) -> GpuInfo:
    cc = as_str(r.required("compute_capability"), r.at("compute_capability"))
    m = _CC.fullmatch(cc)
    if m is None:
        raise fail(r.where, f"compute_capability {cc!r} is not 'major.minor'")
    gpu = GpuInfo(
        architecture=_text(r, "architecture"),
        compute_capability=cc,
        sm=as_int(r.required("sm"), r.at("sm")),
        cuda_cores=as_int(r.required("cuda_cores"), r.at("cuda_cores")),
    )
    r.done()
    if gpu.sm != int(m.group(1)) * 10 + int(m.group(2)):
        raise fail(r.where, f"sm {gpu.sm} does not match compute_capability {cc}")
    if gpu.cuda_cores <= 0:
        raise fail(r.where, "cuda_cores must be positive")
    return gpu


def _software(r: Table) -> SoftwareStack:
    values = {}
    for key in ("jetpack", "cuda", "tensorrt"):
        v = r.optional(key)
        if v is not None and not _VERSION.fullmatch(as_str(v, r.at(key))):
            raise fail(r.where, f"{key} {v!r} is not a version like '6.2' or '4.6.x'")
        values[key] = v
    r.done()
    return SoftwareStack(**values)


def _check_consistency(p: DeviceProfile, label: str) -> None:
    def bad(why: str) -> MalformedError:
        return MalformedError(f"device profile {label!r}: {why}")

    if p.dla_cores < 0:
        raise bad("dla_cores must be >= 0")
    if (p.dla_cores == 0) != (len(p.dla_precisions) == 0):
        raise bad("dla_precisions must be empty exactly when dla_cores == 0")
    if p.dla_cores and p.gpu is None:
        raise bad("a DLA needs a GPU section")
    if p.memory_gb <= 0:
        raise bad("memory_gb must be positive")
    if p.memory_bandwidth_gbps is not None and p.memory_bandwidth_gbps <= 0:
        raise bad("memory_bandwidth_gbps must be positive")
    gpu_only = ("trt-engine" in p.backends, p.software.cuda, p.software.tensorrt)
    if p.gpu is None and any(gpu_only):
        raise bad("trt-engine / cuda / tensorrt need a GPU section")
    if "fp32" not in p.precisions:
        raise bad("every device runs fp32")
