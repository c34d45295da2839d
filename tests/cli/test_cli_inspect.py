"""``edgeguard inspect`` as people read it: every tensor's name and shape, full names."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import build, eg, make_keys


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
