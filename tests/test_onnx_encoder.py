"""ONNX Runtime runs the encoder for the feature cache on a CPU: same features, or PyTorch's."""
import numpy as np
import pytest
import torch

from showtell import onnx_encoder
from showtell.datasets import read_flickr8k
from showtell.encoders import build_encoder
from showtell.features import FeatureCache
from showtell.images import load_image
from showtell.inference import InferenceEncoder
from showtell.onnx_encoder import OnnxEncoder


def _photos(flickr8k_root, enc, n):
    items = read_flickr8k(flickr8k_root, "test")[:n]
    return items, torch.stack([enc.preprocessing(load_image(it.path)) for it in items])


@pytest.mark.parametrize("name, weights", [("efficientnet_lite0", "default"), ("resnet18", None)])
def test_onnx_encoder_gives_the_encoders_features(flickr8k_root, name, weights):
    enc = build_encoder(name, weights=weights)
    _, x = _photos(flickr8k_root, enc, 3)
    ort_enc = OnnxEncoder(enc)
    with torch.inference_mode():
        expected = enc(x)
    for batch in (x, x[:1]):  # any batch size: the export's batch axis is dynamic
        got = ort_enc(batch)
        assert got.grid == expected.grid == (7, 7)
        n = len(batch)
        scale = expected.spatial.abs().max().item()
        assert torch.allclose(got.spatial, expected.spatial[:n], atol=1e-5 * scale + 1e-5)
        assert torch.allclose(got.pooled, expected.pooled[:n], atol=1e-5 * scale + 1e-5)


def test_feature_cache_is_the_same_with_either_runtime(flickr8k_root, tmp_path):
    enc = build_encoder("efficientnet_lite0")
    items = read_flickr8k(flickr8k_root, "test")[:6]
    by = {runtime: FeatureCache(str(tmp_path / runtime)).get("flickr8k", "test", items, enc, num_workers=0,
                                                             progress=False, runtime=runtime)
          for runtime in ("torch", "onnxruntime")}
    assert np.allclose(by["onnxruntime"].pooled, by["torch"].pooled, atol=1e-4)
    # float16 rows: at most one rounding step apart
    assert np.allclose(np.asarray(by["onnxruntime"].spatial, np.float32), np.asarray(by["torch"].spatial, np.float32),
                       rtol=2e-3, atol=1e-3)
    # the key does not name the runtime: either build is the same cache entry
    assert FeatureCache(str(tmp_path)).path("flickr8k", "test", items, enc).split("/")[-1] == \
        FeatureCache(str(tmp_path / "torch")).path("flickr8k", "test", items, enc).split("/")[-1]


def test_runtime_choice_and_its_errors(monkeypatch):
    enc = build_encoder("resnet18", weights=None)
    assert InferenceEncoder(enc, "cpu", "auto").runtime == "onnxruntime"  # installed by make test
    assert InferenceEncoder(enc, "cpu", "torch").runtime == "torch"
    with pytest.raises(ValueError, match="on the CPU"):
        InferenceEncoder(enc, "cuda", "onnxruntime")  # refused before anything touches CUDA
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        InferenceEncoder(enc, "cpu", "tensorrt")
    # an export that fails: "auto" warns and falls back to PyTorch, "onnxruntime" raises
    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.warns(UserWarning, match="computing features with PyTorch"):
        assert InferenceEncoder(enc, "cpu", "auto").runtime == "torch"
    with pytest.raises(RuntimeError, match="unsupported operator"):
        InferenceEncoder(enc, "cpu", "onnxruntime")
    # not installed: "auto" is PyTorch, "onnxruntime" names what to install
    monkeypatch.setattr(onnx_encoder, "available", lambda: False)
    assert InferenceEncoder(enc, "cpu", "auto").runtime == "torch"
    with pytest.raises(RuntimeError, match="requirements-onnx.txt"):
        InferenceEncoder(enc, "cpu", "onnxruntime")


def test_captioner_runs_its_encoder_in_onnx_runtime_with_pytorchs_captions(flickr8k_root):
    """caption()'s default on a CPU: ONNX Runtime runs the encoder (installed by
    make test), the decoder stays in PyTorch; the features are PyTorch's to float
    tolerance and the captions the same, guided and not."""
    from showtell.captioner import Captioner

    fast, plain = Captioner(), Captioner(runtime="torch")
    assert (fast.runtime, plain.runtime) == ("onnxruntime", "torch")
    assert isinstance(fast.inference_encoder._onnx, OnnxEncoder) and plain.inference_encoder._onnx is None
    items = read_flickr8k(flickr8k_root, "test")[:20]  # more than one ONNX Runtime batch of 16
    paths = [it.path for it in items]
    x = torch.stack([fast.pixels(p) for p in paths])
    a, b = fast.encode(x), plain.encode(x)
    assert a.grid == b.grid and a.spatial.shape == b.spatial.shape == (20, 49, 1280)
    scale = b.spatial.abs().max().item()
    assert torch.allclose(a.spatial, b.spatial, atol=1e-5 * scale + 1e-5)
    assert torch.allclose(a.pooled, b.pooled, atol=1e-5 * scale + 1e-5)
    assert fast(paths) == plain(paths)
    assert fast(paths[:5], guided=False) == plain(paths[:5], guided=False)
    # the ImageNet tags read the same pooled row
    tags = [c.describe(paths[0]).classes for c in (fast, plain)]
    assert [t.class_index for t in tags[0]] == [t.class_index for t in tags[1]]
    assert np.allclose([t.prob for t in tags[0]], [t.prob for t in tags[1]], atol=1e-5)
    # Between captions the decoder has the cores: ONNX Runtime's idle threads must not spin.
    options = fast.inference_encoder._onnx._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_captioner_runtime_choice(monkeypatch):
    from showtell.captioner import Captioner

    # a reduced precision is PyTorch's autocast: "auto" keeps the encoder in PyTorch, "onnxruntime" is refused
    assert Captioner(precision="bfloat16").runtime == "torch"
    with pytest.raises(ValueError, match="float32, not bfloat16"):
        Captioner(precision="bfloat16", runtime="onnxruntime")
    with pytest.raises(ValueError, match="unknown runtime 'openvino'"):
        Captioner(runtime="openvino")
    monkeypatch.setattr(onnx_encoder, "available", lambda: False)
    assert Captioner().runtime == "torch"  # not installed: PyTorch, silently
    with pytest.raises(RuntimeError, match="requirements-onnx.txt"):
        Captioner(runtime="onnxruntime")


def test_command_lines_offer_every_runtime():
    """The CLI and app.py spell the runtimes out (their --help must not import torch): the same list."""
    import argparse

    import app
    from showtell.cli.caption import fill_parser as _fill_caption_parser

    (action,) = [a for a in _fill_caption_parser(argparse.ArgumentParser())._actions if a.dest == "encoder_runtime"]
    assert tuple(action.choices) == onnx_encoder.RUNTIMES
    for runtime in onnx_encoder.RUNTIMES:
        assert app.parse_args(["--encoder-runtime", runtime]).encoder_runtime == runtime
    with pytest.raises(SystemExit):
        app.parse_args(["--encoder-runtime", "tensorrt"])


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_the_cache_and_the_captioner_run_the_encoder_the_same_way(flickr8k_root, tmp_path, runtime):
    """One InferenceEncoder serves FeatureCache and Captioner: the same photos
    give the same numbers (the cache stores spatial rows in float16)."""
    from showtell.captioner import Captioner

    cap = Captioner(runtime=runtime)
    items, x = _photos(flickr8k_root, cap.model.encoder, 6)
    fs = FeatureCache(str(tmp_path)).get("flickr8k", "test", items, build_encoder("efficientnet_lite0"),
                                         num_workers=0, progress=False, runtime=runtime)
    enc = cap.encode(x)
    assert np.array_equal(np.asarray(fs.pooled), enc.pooled.numpy())
    assert np.array_equal(np.asarray(fs.spatial), enc.spatial.half().numpy())
