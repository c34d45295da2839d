"""The CLI as people read it: inspect shows every name and shape; mistakes are one line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import build, eg, make_keys, run_bundle


def _model(path: Path) -> None:
    """Lower-case dimension names ([batch, 3, height, width]) that rich took for markup."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["images"], ["feature_map"], name="c")],
        "m",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "w"])],
        [helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, ["batch", 2, "h", "w"])],
        [w],
    )
    g.node[0].input.append("w")
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())


def test_inspect_shows_every_shape_and_marks_an_expired_bundle(tmp_path: Path) -> None:
    make_keys(tmp_path)
    model = tmp_path / "a_model_with_a_rather_long_descriptive_name.onnx"
    _model(model)
    out = tmp_path / "b.egb"
    r = build(tmp_path, out, model)
    assert r.returncode == 0, r.stderr
    r = eg("inspect", out, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "images float32[?, 3, ?, ?]" in r.stdout
    assert "feature_map float32[?, 2, ?, ?]" in r.stdout
    assert r.stdout.count("a_model_with_a_rather_long_descriptive_name") == 3
    assert "runtime policy: one model, its answer as is" in r.stdout
    assert "(expired)" not in r.stdout
    # at 80 columns long cells fold onto more lines instead of being cut with an ellipsis
    narrow = eg("inspect", out, env={"COLUMNS": "80"}).stdout
    assert narrow.count("…") == r.stdout.count("…")  # only the digest and key-id prefixes

    from edgeguard import api
    from edgeguard.keystore import load_device_public, load_signer_key

    now = int(time.time())
    old = tmp_path / "old.egb"
    api.build_bundle(
        [model],
        out=old,
        signer=load_signer_key(tmp_path / "signer.key"),
        recipients=[load_device_public(tmp_path / "dev" / "device.pub")],
        profiles=["generic-cpu"],
        version=1,
        created=now - 7200,
        expires=now - 3600,
    )
    assert "(expired)" in eg("inspect", old).stdout


def test_json_commands_report_an_error_on_stdout_too(tmp_path: Path) -> None:
    make_keys(tmp_path)
    model = tmp_path / "m.onnx"
    _model(model)
    out = tmp_path / "b.egb"
    assert build(tmp_path, out, model).returncode == 0
    data = bytearray(out.read_bytes())
    data[-1] ^= 1  # the last payload byte
    out.write_bytes(bytes(data))
    r = eg("verify", out, "--trust", tmp_path / "signer.pub", "--json")
    assert r.returncode == 4
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "IntegrityError" and err["exit_code"] == 4 and err["message"]
    assert r.stderr.startswith("edgeguard: error: ")  # people still get the one line
    # without --json, stdout stays empty
    assert eg("verify", out, "--trust", tmp_path / "signer.pub").stdout == ""


def test_a_key_of_the_wrong_kind_is_a_key_error_whichever_way_round(tmp_path: Path) -> None:
    """exit 9 (KeyFileError) with a hint, for a .pub given as a private key, a .key given
    as a trusted public key, and a signer key given as a device key (and the reverse)."""
    make_keys(tmp_path)
    model = tmp_path / "m.onnx"
    _model(model)
    out = tmp_path / "b.egb"
    assert build(tmp_path, out, model).returncode == 0
    pub, key = tmp_path / "signer.pub", tmp_path / "signer.key"
    dev_pub, dev_key = tmp_path / "dev" / "device.pub", tmp_path / "dev" / "device.key"
    cases = [
        (("--trust", pub, "--device-key", dev_pub), "is a public key, expected a private key"),
        (("--trust", key, "--device-key", dev_key), "is a private key, expected a public key"),
        (("--trust", pub, "--device-key", key), "is a signer key, expected a device key"),
        (("--trust", dev_pub, "--device-key", dev_key), "expected a signer public key"),
    ]
    for args, message in cases:
        r = eg("verify", out, *args)
        assert r.returncode == 9, (args, r.stderr)
        assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_input_file_and_model_file_mistakes_are_one_line_with_their_exit_code(
    tmp_path: Path,
) -> None:
    make_keys(tmp_path)
    model = tmp_path / "m.onnx"
    _model(model)
    out = tmp_path / "b.egb"
    assert build(tmp_path, out, model).returncode == 0
    frames = np.zeros((2, 3, 8, 8), np.float32)
    np.savez(tmp_path / "extra.npz", images=frames, label=np.zeros(2))
    r = run_bundle(tmp_path, out, tmp_path / "extra.npz", tmp_path / "o.npz", tmp_path / "s")
    assert r.returncode == 2 and "does not take: label" in r.stderr, r.stderr
    np.savez(tmp_path / "wrong.npz", image=frames)
    r = run_bundle(tmp_path, out, tmp_path / "wrong.npz", tmp_path / "o.npz", tmp_path / "s")
    assert r.returncode == 2 and "the model takes images; " in r.stderr, r.stderr
    script = tmp_path / "mk.py"
    script.write_text("print('not a model')\n")
    np.savez(tmp_path / "cal.npz", images=frames)
    r = eg("calibrate", script, "--data", tmp_path / "cal.npz", "-o", tmp_path / "p.json")
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr


def test_a_folder_of_images_says_what_it_becomes(tmp_path: Path) -> None:
    from PIL import Image

    model = tmp_path / "m.onnx"
    _model(model)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(folder / f"{i}.png")
    r = eg("calibrate", model, "--data", folder, "-o", tmp_path / "p.json")
    assert "scaled to 0..1 as RGB" in r.stderr and "preprocessing" in r.stderr, r.stderr


def test_run_refuses_what_would_fail_after_the_frames_ran(tmp_path: Path) -> None:
    make_keys(tmp_path)
    model = tmp_path / "m.onnx"
    _model(model)
    out = tmp_path / "b.egb"
    assert build(tmp_path, out, model).returncode == 0
    np.savez(tmp_path / "in.npz", images=np.zeros((2, 3, 8, 8), np.float32))
    r = run_bundle(tmp_path, out, tmp_path / "in.npz", tmp_path / "nodir" / "o.npz", tmp_path / "s")
    assert r.returncode == 2 and "output directory" in r.stderr and ".tmp" not in r.stderr
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 3, 8, 8), np.float32))
    r = run_bundle(tmp_path, out, tmp_path / "empty.npz", tmp_path / "o.npz", tmp_path / "s")
    assert r.returncode == 2 and "holds no frames" in r.stderr
    r = build(tmp_path, tmp_path / "x.egb", model, extra=("--expires", "2020-01-01T00:00:00Z"))
    assert r.returncode == 2 and "2020-01-01T00:00:00Z must lie after" in r.stderr
