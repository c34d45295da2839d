"""Device profiles (devices/*.toml) and the ``edgeguard devices`` command."""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest

from edgeguard import devices
from edgeguard.cli.main import main
from edgeguard.errors import MalformedError, UsageError

REQUIRED = {
    "jetson-nano": (53, 0),
    "jetson-tx2": (62, 0),
    "jetson-xavier-nx": (72, 2),
    "jetson-agx-xavier": (72, 2),
    "jetson-orin-nano": (87, 0),
    "jetson-orin-nx": (87, 2),
    "jetson-agx-orin": (87, 2),
    "jetson-thor": (110, 0),
}
REPO_DEVICES = pathlib.Path(__file__).resolve().parents[2] / "devices"


def test_required_profiles_exist() -> None:
    names = devices.list_profiles()
    assert set(REQUIRED) | {"generic-cpu"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_jetson_profiles_sm_and_dla(name: str) -> None:
    p = devices.load_profile(name)
    sm, dla = REQUIRED[name]
    assert p.id == name
    assert p.gpu is not None and p.gpu.sm == sm
    major, minor = p.gpu.compute_capability.split(".")
    assert int(major) * 10 + int(minor) == sm
    assert p.dla_cores == dla
    assert bool(p.dla_precisions) == (dla > 0)
    assert p.cpu_arch == ("aarch64",)
    assert "trt-engine" in p.backends and "onnx" in p.backends
    assert p.software.jetpack and p.software.cuda and p.software.tensorrt


def test_software_lines() -> None:
    expected = {
        "jetson-nano": ("10.2", "8.2"),
        "jetson-tx2": ("10.2", "8.2"),
        "jetson-xavier-nx": ("11.4", "8.5"),
        "jetson-agx-xavier": ("11.4", "8.5"),
        "jetson-orin-nano": ("12.6", "10.3"),
        "jetson-orin-nx": ("12.6", "10.3"),
        "jetson-agx-orin": ("12.6", "10.3"),
        "jetson-thor": ("13.0", "10.13"),
    }
    for name, (cuda, trt) in expected.items():
        sw = devices.load_profile(name).software
        assert (sw.cuda, sw.tensorrt) == (cuda, trt), name


def test_generic_cpu_is_the_cpu_only_default() -> None:
    p = devices.load_profile("generic-cpu")
    assert p.gpu is None and not p.has_gpu
    assert p.dla_cores == 0 and p.backends == ("onnx",)
    assert set(p.cpu_arch) == {"x86_64", "aarch64"}
    assert p.software.cuda is None and p.software.tensorrt is None
    assert p.to_dict()["gpu"] is None


def test_every_profile_loads_and_round_trips_to_json() -> None:
    for name in devices.list_profiles():
        p = devices.load_profile(name)
        d = json.loads(json.dumps(p.to_dict()))
        assert d["id"] == name
        assert d["memory_gb"] > 0
        with pytest.raises(AttributeError):
            p.dla_cores = 9  # type: ignore[misc]


def test_digest_is_sha256_of_file_bytes() -> None:
    for name in devices.list_profiles():
        raw = (REPO_DEVICES / f"{name}.toml").read_bytes()
        assert devices.profile_digest(name) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert devices.profile_digest("jetson-nano") != devices.profile_digest("jetson-tx2")


@pytest.mark.parametrize(
    "name", ["jetson-orin-nx-8gb", "JETSON-NANO", "../devices/jetson-nano", "", "jetson-nano\n"]
)
def test_unknown_or_invalid_names_refused(name: str) -> None:
    with pytest.raises(UsageError):
        devices.load_profile(name)


def test_unknown_name_error_lists_known_names() -> None:
    with pytest.raises(UsageError) as info:
        devices.load_profile("jetson-xavier")
    assert "jetson-xavier-nx" in info.value.one_line() and "generic-cpu" in info.value.one_line()


def _write(tmp_path: pathlib.Path, name: str, text: str) -> pathlib.Path:
    (tmp_path / f"{name}.toml").write_text(text, encoding="utf-8")
    return tmp_path


def _valid_text() -> str:
    return (REPO_DEVICES / "jetson-orin-nx.toml").read_text(encoding="utf-8")


def test_custom_directory_with_a_valid_copy(tmp_path: pathlib.Path) -> None:
    d = _write(tmp_path, "jetson-orin-nx", _valid_text())
    assert devices.list_profiles(directory=d) == ["jetson-orin-nx"]
    assert devices.load_profile("jetson-orin-nx", directory=d) == devices.load_profile(
        "jetson-orin-nx"
    )


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("dla_cores = 2", "dla_cores = [", "not valid TOML"),
        ("dla_cores = 2", 'dla_cores = "2"', "dla_cores"),
        ("dla_cores = 2", "dla_cores = true", "dla_cores"),
        ("dla_cores = 2", "dla_cores = 0", "dla_precisions"),
        ("dla_cores = 2\n", "", "misses the field 'dla_cores'"),
        ("sm = 87", "sm = 86", "does not match compute_capability"),
        ('compute_capability = "8.7"', "compute_capability = 8.7", "compute_capability"),
        ('id = "jetson-orin-nx"', 'id = "jetson-agx-orin"', "file name"),
        ("schema = 1", "schema = 2", "schema"),
        ("notes = ", 'colour = "green"\nnotes = ', "unknown field"),
        ("cuda_cores = 1024", "cuda_cores = 1024\nsm_count = 8", "unknown field"),
        ('"bf16", ', '"bf16", "int3", ', "precisions"),
        ("memory_gb = 16", "memory_gb = -16", "memory_gb"),
        ("memory_gb = 16", 'memory_gb = "16 GB"', "memory_gb"),
        ('tensorrt = "10.3"', 'tensorrt = "ten"', "tensorrt"),
        ('cpu_arch = ["aarch64"]', "cpu_arch = []", "cpu_arch"),
        ('backends = ["onnx", "trt-engine"]', 'backends = ["onnx", "onnx"]', "duplicate"),
    ],
)
def test_malformed_profiles_refused(tmp_path: pathlib.Path, old: str, new: str, match: str) -> None:
    text = _valid_text()
    assert old in text
    d = _write(tmp_path, "jetson-orin-nx", text.replace(old, new, 1))
    with pytest.raises(MalformedError, match=match):
        devices.load_profile("jetson-orin-nx", directory=d)


def test_gpu_only_fields_need_a_gpu(tmp_path: pathlib.Path) -> None:
    text = (REPO_DEVICES / "generic-cpu.toml").read_text(encoding="utf-8")
    d = _write(
        tmp_path,
        "generic-cpu",
        text.replace('backends = ["onnx"]', 'backends = ["onnx", "trt-engine"]'),
    )
    with pytest.raises(MalformedError, match="GPU"):
        devices.load_profile("generic-cpu", directory=d)


def test_non_utf8_and_oversized_files_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.toml").write_bytes(b'id = "\xff"\n')
    with pytest.raises(MalformedError):
        devices.load_profile("a", directory=tmp_path)
    (tmp_path / "b.toml").write_bytes(b"#" * (devices.MAX_PROFILE_BYTES + 1))
    with pytest.raises(MalformedError, match="larger"):
        devices.load_profile("b", directory=tmp_path)


def test_parse_profile_without_files() -> None:
    raw = (REPO_DEVICES / "jetson-thor.toml").read_bytes()
    assert devices.parse_profile(raw).id == "jetson-thor"
    with pytest.raises(MalformedError, match="file name"):
        devices.parse_profile(raw, expected_id="jetson-nano")


# -- CLI ---------------------------------------------------------------------------------


def test_cli_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out
    for name in REQUIRED:
        assert name in out
    assert "110" in out and "10.13" in out


def test_cli_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_id = {d["id"]: d for d in data}
    assert set(by_id) == set(devices.list_profiles())
    assert by_id["jetson-agx-orin"]["gpu"]["sm"] == 87
    assert by_id["generic-cpu"]["gpu"] is None


def test_cli_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "show", "jetson-orin-nx"]) == 0
    out = capsys.readouterr().out
    assert "sm_87" in out and "Cortex-A78AE" in out
    assert main(["devices", "show", "jetson-orin-nx", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dla_cores"] == 2
    assert data["digest"] == devices.profile_digest("jetson-orin-nx")


def test_cli_show_unknown_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "show", "jetson-nope"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "jetson-nope" in err and "jetson-thor" in err
