"""Export of small random-init ViT / DeiT / DeiT3 configurations, metadata, verification, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import timm
import torch
from safetensors.torch import save_file

from vitqbench.export import export_model
from vitqbench.metadata import read_head, read_metadata
from vitqbench.runtime import create_session

SMALL = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=7)
SMALL_SET = [f"--set={k}={v}" for k, v in SMALL.items()]


def _checkpoint(tmp_path, name, suffix=".pth", **kwargs):
    torch.manual_seed(1)
    net = timm.create_model(name, **{**SMALL, **kwargs})
    with torch.no_grad():
        net.get_classifier().bias.normal_(0, 0.5)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    return net.eval(), path


@pytest.mark.parametrize(
    "name",
    [
        "deit_small_patch16_224.fb_in1k",
        "deit3_small_patch16_224.fb_in22k_ft_in1k",
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
    ],
)
def test_export_matches_pytorch_at_batch_1_and_3(tmp_path, run_cli, name):
    net, weights = _checkpoint(tmp_path, name.split(".")[0])
    out = tmp_path / "m.onnx"
    result = run_cli("export", name, "--checkpoint", weights, "-o", out, *SMALL_SET)
    assert result.code == 0, result.stderr
    assert "max |delta logits|" in result.stdout

    session = create_session(out)
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref_logits = net(x).numpy()
            ref_features = net.forward_head(net.forward_features(x), pre_logits=True).numpy()
        logits, features = session.run(None, {"pixel_values": x.numpy()})
        assert logits.shape == (batch, 7) and features.shape == (batch, 64)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
        np.testing.assert_allclose(features, ref_features, atol=1e-4)

    meta = read_metadata(out)
    assert meta.timm_name == name.split(".")[0] and meta.timm_tag == name.split(".")[1]
    assert meta.num_classes == 7 and meta.feature_dim == 64
    assert meta.data_config.input_size == (3, 32, 32)
    timm_config = timm.data.resolve_data_config({}, model=timm.create_model(name, **SMALL))
    for key in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
        assert getattr(meta.data_config, key) == pytest.approx(timm_config[key]), key
    assert meta.source["kind"] == "checkpoint" and len(meta.source["sha256"]) == 64
    assert meta.precision == "fp32"
    weight, bias = read_head(out)
    np.testing.assert_array_equal(weight, net.head.weight.detach().numpy())
    np.testing.assert_array_equal(bias, net.head.bias.detach().numpy())


def test_metadata_is_one_json_document(tiny_onnx):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx), load_external_data=False).metadata_props}
    doc = json.loads(props["vitqbench"])
    assert doc["schema_version"] == 1
    assert set(doc["data_config"]) == {"input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode"}
    assert doc["outputs"] == {"logits": "logits", "features": "features"}
    graph = onnx.load(str(tiny_onnx)).graph
    assert not any(node.metadata_props for node in graph.node)  # no exporter stack traces in the file
    assert "Identity" not in {node.op_type for node in graph.node}


def test_random_init_is_seeded_and_safetensors_checkpoints_load(tmp_path):
    a = export_model(
        "deit_tiny_patch16_224", tmp_path / "a.onnx", pretrained=False, model_kwargs=SMALL, seed=3
    )
    b = export_model(
        "deit_tiny_patch16_224", tmp_path / "b.onnx", pretrained=False, model_kwargs=SMALL, seed=3
    )
    assert a.metadata.source == {"kind": "random", "seed": 3}
    assert read_head(a.path)[0].tobytes() == read_head(b.path)[0].tobytes()
    net, weights = _checkpoint(tmp_path, "deit_tiny_patch16_224", suffix=".safetensors")
    c = export_model("deit_tiny_patch16_224", tmp_path / "c.onnx", checkpoint=weights, model_kwargs=SMALL)
    np.testing.assert_array_equal(read_head(c.path)[0], net.head.weight.detach().numpy())


def test_distilled_deit_exports_without_a_linear_head(tmp_path):
    result = export_model(
        "deit_tiny_distilled_patch16_224", tmp_path / "d.onnx", pretrained=False, model_kwargs=SMALL
    )
    assert result.verification.passed
    assert result.metadata.head is None  # logits average two heads: no single W, b maps features to them


def test_data_config_overrides(tmp_path, run_cli):
    out = tmp_path / "m.onnx"
    args = ("--mean", "0.5", "--std", "0.2,0.3,0.4", "--interpolation", "bilinear", "--crop-pct", "1.0")
    result = run_cli("export", "deit_tiny_patch16_224", "--no-pretrained", "-o", out, *SMALL_SET, *args)
    assert result.code == 0, result.stderr
    config = read_metadata(out).data_config
    assert config.mean == (0.5, 0.5, 0.5) and config.std == (0.2, 0.3, 0.4)
    assert config.interpolation == "bilinear" and config.crop_pct == 1.0


def test_one_channel_model_gets_one_mean(tmp_path):
    result = export_model(
        "vit_tiny_patch16_224", tmp_path / "g.onnx", pretrained=False, model_kwargs={**SMALL, "in_chans": 1}
    )
    assert result.metadata.data_config.input_size == (1, 32, 32)
    assert len(result.metadata.data_config.mean) == 1


def _assert_one_line_error(result, *fragments):
    assert result.code != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_model_suggests_close_names(tmp_path, run_cli):
    result = run_cli("export", "deit_smal_patch16_224", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(result, "unknown timm model", "deit_small_patch16_224")


def test_unknown_tag(tmp_path, run_cli):
    result = run_cli("export", "deit_small_patch16_224.nope", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(result, "unknown pretrained tag", "fb_in1k")


def test_offline_pretrained_download_fails_with_a_hint(tmp_path, run_cli):
    out = tmp_path / "m.onnx"
    result = run_cli("export", "deit_tiny_patch16_224.fb_in1k", "-o", out)
    _assert_one_line_error(result, "deit_tiny_patch16_224.fb_in1k", "--checkpoint", "--no-pretrained")
    assert not out.exists()


def test_mismatched_checkpoint_names_keys(tmp_path, run_cli):
    _, weights = _checkpoint(tmp_path, "deit_tiny_patch16_224", embed_dim=32)
    out = tmp_path / "m.onnx"
    result = run_cli("export", "deit_tiny_patch16_224", "--checkpoint", weights, "-o", out, *SMALL_SET)
    _assert_one_line_error(result, "does not match", "shape mismatch")
    assert not out.exists()


def test_garbage_checkpoint(tmp_path, run_cli):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not a checkpoint")
    result = run_cli("export", "deit_tiny_patch16_224", "--checkpoint", weights, "-o", tmp_path / "m.onnx")
    _assert_one_line_error(result, "cannot read checkpoint")


def test_unwritable_output(tmp_path, run_cli):
    result = run_cli("export", "deit_tiny_patch16_224", "--no-pretrained", "-o", tmp_path / "no" / "m.onnx")
    _assert_one_line_error(result, "does not exist")


def test_bad_set_and_bad_kwarg(tmp_path, run_cli):
    out = tmp_path / "m.onnx"
    _assert_one_line_error(
        run_cli("export", "deit_tiny_patch16_224", "--no-pretrained", "--set", "depth", "-o", out)
    )
    result = run_cli("export", "deit_tiny_patch16_224", "--no-pretrained", "--set", "bogus_arg=1", "-o", out)
    _assert_one_line_error(result, "bogus_arg")
    result = run_cli("export", "deit_tiny_patch16_224", "--no-pretrained", "--interpolation", "foo", "-o", out)
    _assert_one_line_error(result, "unknown data_config.interpolation 'foo'")
    assert not out.exists()


def test_failed_verification_writes_nothing(tmp_path, run_cli):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous file")
    result = run_cli(
        "export", "deit_tiny_patch16_224", "--no-pretrained", "--tolerance", "1e-12", "-o", out, *SMALL_SET
    )
    _assert_one_line_error(result, "verification failed")
    assert out.read_bytes() == b"previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_model_hash_and_files_cover_external_data(tiny_onnx, tmp_path):
    """Weights saved beside the model count toward its size and its cache key."""
    from vitqbench.metadata import model_files, model_sha256

    model = onnx.load(str(tiny_onnx))
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert [p.name for p in model_files(path)] == ["ext.onnx", "ext.onnx.data"]
    assert model_files(tiny_onnx) == [tiny_onnx]
    before = model_sha256(path)
    data = path.with_name("ext.onnx.data")
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF  # one weight changes; the .onnx file does not
    data.write_bytes(bytes(blob))
    assert model_sha256(path) != before


def test_verification_fails_on_non_finite_outputs():
    from vitqbench.export.onnx_export import Verification, _max_abs_diff

    ok = np.ones((2, 3), np.float32)
    assert _max_abs_diff(ok, ok + 1e-6) < 1e-5
    for bad in (np.full((2, 3), np.nan, np.float32), np.full((2, 3), np.inf, np.float32)):
        assert _max_abs_diff(bad, ok) == float("inf") and _max_abs_diff(ok, bad) == float("inf")
    assert not Verification(_max_abs_diff(ok, ok * np.nan), 0.0, 1.0, (1,), 1e-3).passed
