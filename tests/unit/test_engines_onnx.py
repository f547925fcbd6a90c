"""Export to ONNX, int8 quantization by ONNX Runtime, the session wrapper, the
calibration sample and torch's own int8, on a small real architecture (ResNet-18 at
32 px, 10 classes) with deterministic weights and inputs."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from vision.engines import quantize
from vision.engines.calibration import CALIBRATION_FILE, load_calibration, save_calibration, stratified_indices
from vision.engines.export import EXPORT_TOLERANCE, ExportError, check_export, export_onnx, load_trained
from vision.engines.onnx_runtime import OnnxClassifier
from vision.engines.quantize import Int8Recipe, quantize_int8
from vision.models import build_model
from vision.scores import softmax

SIZE = 32
CLASSES = 10
TORCH_INT8 = Path(__file__).resolve().parents[2] / "benchmarks" / "engines" / "torch_int8.py"  # measured, not served


def quantize_fx_x86(module, calibration):
    spec = importlib.util.spec_from_file_location("torch_int8", TORCH_INT8)
    torch_int8 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_int8)
    return torch_int8.quantize_fx_x86(module, calibration)


def trained_like_resnet18() -> torch.nn.Module:
    """ResNet-18 with seeded weights and BatchNorm statistics that are not the identity,
    so folding and quantization have real work to do."""
    torch.manual_seed(0)
    model = build_model("resnet18", CLASSES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def images(count: int, seed: int) -> np.ndarray:
    """Smooth random fields, normalized like real inputs (roughly zero mean, unit spread)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (count, 3, SIZE // 4, SIZE // 4)).astype(np.float32)
    return np.ascontiguousarray(coarse.repeat(4, axis=2).repeat(4, axis=3) + rng.normal(0, 0.2, (count, 3, SIZE, SIZE)).astype(np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = trained_like_resnet18()
    path = export_onnx(model, SIZE, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path


@pytest.fixture(scope="module")
def int8(exported, tmp_path_factory):
    _, path = exported
    return quantize_int8(path, tmp_path_factory.mktemp("int8") / "model.int8.onnx", images(32, seed=1))


def test_export_matches_torch_at_any_batch_size(exported):
    model, path = exported
    session = OnnxClassifier(path, threads=1)
    assert session.input_shape[1:] == [3, SIZE, SIZE] and isinstance(session.input_shape[0], str)  # dynamic batch axis
    assert session.num_classes == CLASSES
    for batch in (1, 3, 8):
        x = images(batch, seed=batch)
        with torch.inference_mode():
            expected = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
        got = session.probabilities(x)
        assert got.shape == (batch, CLASSES)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
        assert np.abs(got - expected).max() < 1e-4


def test_export_folds_batchnorm(exported):
    _, path = exported
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops


def test_export_check_refuses_a_model_that_computes_something_else(exported):
    model, path = exported
    other = trained_like_resnet18()
    with torch.no_grad():
        other.fc.weight.mul_(-1)
    assert check_export(model, path, torch.from_numpy(images(2, seed=5))) <= EXPORT_TOLERANCE
    with pytest.raises(ExportError, match="differ from torch's"):
        check_export(other, path, torch.from_numpy(images(2, seed=5)))


def test_int8_is_qdq_per_channel_and_close_to_fp32(exported, int8):
    _, path = exported
    graph = onnx.load(str(int8)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 10 and "DequantizeLinear" in ops
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weight_dq = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear" and initializers.get(n.input[0]) is not None and initializers[n.input[0]].dtype == np.int8
    ]
    assert weight_dq, "no int8 weights"
    per_channel = [n for n in weight_dq if initializers[n.input[1]].ndim == 1 and initializers[n.input[1]].size > 1]
    assert len(per_channel) == 18  # every int8 layer (21 less the first two and the head) has one scale per output channel
    x = images(16, seed=2)
    fp32 = OnnxClassifier(path, threads=1).logits(x)
    quantized = OnnxClassifier(int8, threads=1).logits(x)
    relative = np.linalg.norm(quantized - fp32) / np.linalg.norm(fp32)
    assert relative < 0.1, relative
    assert (quantized.argmax(1) == fp32.argmax(1)).mean() >= 0.75


def test_reduce_range_is_the_default_and_keeps_weights_within_seven_bits(exported, tmp_path):
    _, path = exported
    assert Int8Recipe().reduce_range  # the default: the serving CPU may lack VNNI
    out = quantize_int8(path, tmp_path / "rr.onnx", images(8, seed=3))
    weights = [numpy_helper.to_array(init) for init in onnx.load(str(out)).graph.initializer if init.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    full_range = quantize_int8(path, tmp_path / "full.onnx", images(8, seed=3), Int8Recipe(reduce_range=False))
    wide = [numpy_helper.to_array(init) for init in onnx.load(str(full_range)).graph.initializer if init.data_type == onnx.TensorProto.INT8]
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in wide) > 100  # 8-bit weights use the whole range


def weight_sources(path: Path) -> list[str]:
    """Per weighted layer (Conv, Gemm, MatMul) in graph order: "fp32" when its weight is a
    float initializer, "int8" when it comes through a DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    sources = []
    for node in graph.node:
        if node.op_type in quantize.WEIGHTED_OPS:
            weight = node.input[1]
            sources.append("fp32" if weight in floats else "int8" if weight in dequantized else weight)
    return sources


def test_the_default_recipe_keeps_the_first_two_weighted_layers_and_the_classifier_fp32(exported, int8, tmp_path):
    _, path = exported
    assert Int8Recipe().fp32_ends
    sources = weight_sources(int8)
    assert len(sources) == 21 and sources[:2] + sources[-1:] == ["fp32"] * 3 and set(sources[2:-1]) == {"int8"}, sources
    every_layer = quantize_int8(path, tmp_path / "all.onnx", images(8, seed=3), Int8Recipe(fp32_ends=False))
    assert set(weight_sources(every_layer)) == {"int8"}


def test_s8s8_recipe_quantizes_activations_signed(exported, tmp_path):
    _, path = exported
    out = quantize_int8(path, tmp_path / "s8.onnx", images(8, seed=3), Int8Recipe(activations="int8"))
    graph = onnx.load(str(out)).graph
    zero_points = {init.name: init.data_type for init in graph.initializer}
    activation_q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_q and all(zero_points[n.input[2]] == onnx.TensorProto.INT8 for n in activation_q)
    assert OnnxClassifier(out, threads=1).probabilities(images(2, seed=4)).shape == (2, CLASSES)


def test_quantize_refuses_bad_calibration_and_recipes(exported, tmp_path):
    _, path = exported
    with pytest.raises(ValueError, match="float32 NCHW"):
        quantize_int8(path, tmp_path / "x.onnx", images(4, seed=0).astype(np.float64))
    with pytest.raises(ValueError, match="non-empty"):
        quantize_int8(path, tmp_path / "x.onnx", np.zeros((0, 3, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="activations='fp8'"):
        Int8Recipe(activations="fp8")
    with pytest.raises(ValueError, match="method='max'"):
        Int8Recipe(method="max")


def test_session_threads_and_input_checks(exported):
    _, path = exported
    session = OnnxClassifier(path, threads=2, spinning=False)
    assert session.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError, match="float32 NCHW"):
        session.logits(images(1, seed=0).astype(np.float64))
    with pytest.raises(ValueError, match="float32 NCHW"):
        session.logits(images(1, seed=0)[0])


def test_softmax_is_stable_for_large_logits():
    probs = softmax(np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], 1 / 3, rtol=1e-6)
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-5)


def test_calibration_sample_is_stratified_and_round_trips(tmp_path):
    labels = np.array([0] * 50 + [1] * 5 + [2] * 45)
    picked = stratified_indices(labels, 12, seed=0)
    assert len(picked) == len(set(picked.tolist())) == 12
    assert sorted(np.bincount(labels[picked]).tolist()) == [4, 4, 4]
    assert np.bincount(labels[stratified_indices(labels, 30)]).tolist() == [13, 5, 12]  # class 1 has only 5
    assert (stratified_indices(labels, 12, seed=0) == picked).all()
    assert len(stratified_indices(labels[:3], 64)) == 3
    crops = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    assert save_calibration(crops, tmp_path).name == CALIBRATION_FILE
    np.testing.assert_array_equal(load_calibration(tmp_path, SIZE), crops)
    with pytest.raises(ValueError, match="the model takes 64x64"):
        load_calibration(tmp_path, 64)
    with pytest.raises(ValueError, match="uint8"):
        save_calibration(crops.astype(np.float32), tmp_path)


def test_calibration_file_is_never_unpickled(tmp_path):
    np.save(tmp_path / CALIBRATION_FILE, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_calibration(tmp_path)


def test_load_trained_reads_the_artifact(tmp_path):
    from vision.artifact import ModelSpec

    model = trained_like_resnet18()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    ModelSpec("resnet18", tuple(f"c{i}" for i in range(CLASSES)), SIZE, 37, (0.5,) * 3, (0.5,) * 3).save(tmp_path)
    spec, loaded = load_trained(tmp_path)
    assert spec.num_classes == CLASSES and not loaded.training
    x = torch.from_numpy(images(2, seed=9))
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_torch_int8_runs_without_a_compiler_and_stays_close():
    model = trained_like_resnet18()
    quantized = quantize_fx_x86(trained_like_resnet18(), torch.from_numpy(images(32, seed=1)))
    x = torch.from_numpy(images(16, seed=2))
    with torch.inference_mode():
        fp32, int8 = model(x), quantized(x)
    assert any("quantized" in type(m).__module__ for m in quantized.modules())
    assert float(torch.linalg.norm(int8 - fp32) / torch.linalg.norm(fp32)) < 0.1


def test_calibrating_batch_by_batch_gives_the_ranges_of_the_whole_sample(exported, tmp_path):
    """The calibrator reduces each batch and merges (bounded memory); the model must be the
    one calibrating on all images at once gives (min/max of mins/maxes is the min/max)."""
    _, path = exported
    sample = images(12, seed=6)
    whole = quantize_int8(path, tmp_path / "whole.onnx", sample, Int8Recipe(calibration_batch=12))
    strided = quantize_int8(path, tmp_path / "strided.onnx", sample, Int8Recipe(calibration_batch=5))

    def scales(model_path):
        graph = onnx.load(str(model_path)).graph
        return {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}

    a, b = scales(whole), scales(strided)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
