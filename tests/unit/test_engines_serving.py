"""The CPU engines in serving: the engine choice per CPU class and setting, the artifact's
engine files as the trainer writes them, ONNX Runtime int8 behind the accuracy guard
(a model made to disagree falls back to fp32, logged), export and quantization at load,
the answer rules on any engine's logits, and the serving stack importing and answering
with torch blocked (the torch-free image's path)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from container import ConfigError, ServeConfig
from container.serving import Machine
from serve.engines import choose_engine, load_classifier
from serve.hosting import admission_bytes
from serve.onnx_model import OnnxRuntimeClassifier
from tests.support.asgi import request, wait_ready, with_lifespan
from tests.support.payloads import png_bytes
from train import synthetic
from train.config import TrainConfig
from train.outputs import save_engine_files
from vision import cpu, guard, scores
from vision.artifact import INT8_FILE, ONNX_FILE, ModelSpec
from vision.engines import quantize
from vision.engines.accuracy import Int8Check, check_int8, decisions
from vision.engines.calibration import CALIBRATION_FILE
from vision.engines.onnx_runtime import OnnxClassifier
from vision.engines.preprocess import EvalPreprocess
from vision.models import build_model

SIZE = 32
CLASSES = tuple(synthetic.SHAPE_CLASSES)
AVX2 = frozenset({"avx", "avx2", "fma"})
REPO = Path(__file__).resolve().parents[2]


def write_artifact(directory: Path, arch: str = "resnet18", **spec_fields) -> ModelSpec:
    """Seeded weights and a spec, as the trainer's save_model writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_model(arch, len(CLASSES)).state_dict(), directory / "model.pt")
    spec = ModelSpec(arch, CLASSES, SIZE, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), **spec_fields)
    spec.save(directory)
    return spec


def shapes_samples(root: Path, per_class: int = 8) -> list[tuple[str, int]]:
    """A training split as the trainer's RunData holds it: (source, class index) pairs."""
    synthetic.make_shapes(root, {"train": per_class}, size=48, seed=0)
    return [(str(path), CLASSES.index(path.parent.name)) for path in sorted((root / "train").glob("*/*.png"))]


@pytest.fixture(scope="module")
def engine_model(tmp_path_factory) -> Path:
    """A model directory with every engine file, written by the trainer's own code."""
    root = tmp_path_factory.mktemp("engines")
    write_artifact(root / "model")
    save_engine_files(TrainConfig(), {"train": shapes_samples(root / "data")}, root / "model")  # no validation split: int8 unchecked
    return root / "model"


def copy_model(source: Path, target: Path, keep=("model.pt", "model_spec.json")) -> Path:
    target.mkdir(parents=True)
    for name in keep:
        (target / name).write_bytes((source / name).read_bytes())
    return target


def shape_batch(classifier, count: int = 6) -> np.ndarray:
    names = list(CLASSES)
    return np.stack(
        [np.asarray(classifier.preprocess(synthetic.make_image(names[i % 3], size=48, seed=500 + i)), np.float32) for i in range(count)]
    )


# --- the artifact ---------------------------------------------------------------------


def test_the_trainer_writes_the_engine_files_and_names_them(engine_model, caplog):
    spec = ModelSpec.load(engine_model)
    assert (spec.onnx_file, spec.int8_file, spec.calibration_file) == (ONNX_FILE, INT8_FILE, CALIBRATION_FILE)
    crops = np.load(engine_model / CALIBRATION_FILE)
    assert crops.shape == (24, SIZE, SIZE, 3) and crops.dtype == np.uint8  # every training image: fewer than 64
    assert (engine_model / INT8_FILE).stat().st_size < (engine_model / ONNX_FILE).stat().st_size / 2


def test_multi_model_admission_counts_one_copy_of_the_network(engine_model, tmp_path):
    """A model dir holds the network up to three times (model.pt, model.onnx, its int8
    variant) and an engine loads one: MME admission charges the largest copy once, plus
    every other file; code/ is not charged."""
    on_disk = sum(f.stat().st_size for f in engine_model.rglob("*") if f.is_file())
    copies = [(engine_model / name).stat().st_size for name in ("model.pt", ONNX_FILE, INT8_FILE)]
    assert admission_bytes(engine_model) == on_disk - sum(copies) + max(copies)
    plain = copy_model(engine_model, tmp_path / "plain")
    (plain / "code").mkdir()
    (plain / "code" / "inference.py").write_text("# " + "x" * 100_000)
    assert admission_bytes(plain) == sum((plain / name).stat().st_size for name in ("model.pt", "model_spec.json"))


def test_a_failed_export_leaves_the_calibration_sample_and_logs(tmp_path, monkeypatch, caplog):
    write_artifact(tmp_path / "model")
    import vision.engines.export as export

    def broken(*args, **kwargs):
        raise export.ExportError("made to fail")

    monkeypatch.setattr(export, "export_onnx", broken)
    with caplog.at_level(logging.WARNING):
        save_engine_files(TrainConfig(), {"train": shapes_samples(tmp_path / "data", 2)}, tmp_path / "model")
    spec = ModelSpec.load(tmp_path / "model")
    assert (spec.onnx_file, spec.int8_file, spec.calibration_file) == ("", "", CALIBRATION_FILE)
    assert not (tmp_path / "model" / ONNX_FILE).exists() and "made to fail" in caplog.text


def validation_labelled_by_fp32(model_dir: Path, root: Path) -> list[tuple[str, int]]:
    """A validation split whose labels are fp32's own answers (fp32 scores 100%), so that
    int8's accuracy is its agreement with fp32 and a broken int8 model fails for certain."""
    synthetic.make_shapes(root, {"valid": 8}, size=48, seed=1)
    paths = sorted(str(path) for path in (root / "valid").glob("*/*.png"))
    preprocess = EvalPreprocess.from_spec(ModelSpec.load(model_dir))
    crops = np.stack([preprocess.crop(Image.open(path).convert("RGB")) for path in paths])
    answers = OnnxClassifier(model_dir / ONNX_FILE, threads=1).logits(preprocess.normalize(crops)).argmax(1)
    return list(zip(paths, (int(answer) for answer in answers), strict=True))


def test_int8_losing_accuracy_on_the_validation_split_is_left_out_and_auto_serves_fp32(engine_model, tmp_path, monkeypatch, caplog):
    write_artifact(tmp_path / "model")
    splits = {"train": shapes_samples(tmp_path / "data"), "validation": validation_labelled_by_fp32(engine_model, tmp_path / "data")}
    real = quantize.quantize_int8

    def broken(fp32, int8, calibration, recipe=None):  # an int8 model that disagrees with fp32
        real(fp32, int8, calibration, recipe or quantize.Int8Recipe())
        corrupt_int8_scales(int8)
        return Path(int8)

    monkeypatch.setattr(quantize, "quantize_int8", broken)
    with caplog.at_level(logging.INFO):
        check = save_engine_files(TrainConfig(), splits, tmp_path / "model")
    monkeypatch.undo()
    spec = ModelSpec.load(tmp_path / "model")
    assert (spec.onnx_file, spec.int8_file) == (ONNX_FILE, "") and not (tmp_path / "model" / INT8_FILE).exists()
    assert check == spec.int8_check and check["passed"] is False and check["images"] == 24 and check["max_drop"] == 0.5
    assert check["fp32_accuracy"] == 100 and check["int8_accuracy"] < 99.5
    assert "int8 vs fp32 on 24 validation images" in caplog.text and "model.int8.onnx left out" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO):
        served = load_classifier(tmp_path / "model", engine="onnxruntime", threads=1, scratch=tmp_path / "scratch")
    assert served.precision == "fp32" and "serving fp32: int8 failed the trainer's accuracy check (int8 vs fp32 on 24" in caplog.text
    assert not (tmp_path / "scratch").exists()  # auto did not quantize at load what the trainer left out
    with caplog.at_level(logging.WARNING):
        forced = load_classifier(tmp_path / "model", precision="int8", engine="onnxruntime", threads=1, scratch=tmp_path / "scratch")
    assert forced.precision == "int8" and "SM_VISION_PRECISION=int8 although int8 failed" in caplog.text


def test_int8_passing_its_check_is_kept_with_the_check_in_the_spec(engine_model, tmp_path, caplog):
    write_artifact(tmp_path / "model")
    splits = {"train": shapes_samples(tmp_path / "data"), "validation": validation_labelled_by_fp32(engine_model, tmp_path / "data")}
    with caplog.at_level(logging.INFO):
        check = save_engine_files(TrainConfig(int8_max_drop=10), splits, tmp_path / "model")
    spec = ModelSpec.load(tmp_path / "model")
    assert spec.int8_file == INT8_FILE and spec.int8_check == check and check["passed"] is True and check["max_drop"] == 10
    assert check["fp32_accuracy"] == 100 and check["int8_accuracy"] == check["agreement"] >= 90
    assert re.search(r"int8 vs fp32 on 24 validation images: .*: passed", caplog.text)
    assert load_classifier(tmp_path / "model", engine="onnxruntime", threads=1).precision == "int8"


def test_the_int8_check_scores_served_decisions_against_labels(engine_model, tmp_path):
    broken = copy_model(engine_model, tmp_path / "broken", (ONNX_FILE, INT8_FILE))
    corrupt_int8_scales(broken / INT8_FILE)
    crops = np.load(engine_model / CALIBRATION_FILE)
    preprocess = EvalPreprocess.from_spec(ModelSpec.load(engine_model))
    fp32_answers = OnnxClassifier(engine_model / ONNX_FILE, threads=1).logits(preprocess.normalize(crops)).argmax(1)
    check = check_int8(engine_model / ONNX_FILE, broken / INT8_FILE, crops, fp32_answers, preprocess.normalize, threads=1, batch=5)
    assert check.images == 24 and check.fp32_accuracy == 100 and check.int8_accuracy == check.agreement < 100 and not check.passed
    assert Int8Check.from_dict(check.to_dict() | {"added_later": 1}) == check
    with pytest.raises(ValueError, match="as many labels as images"):
        check_int8(engine_model / ONNX_FILE, broken / INT8_FILE, crops, fp32_answers[:3], preprocess.normalize)
    logits = np.array([[2.0, -2.0, 0.1], [-3.0, 1.0, 3.0]], np.float32)
    np.testing.assert_array_equal(decisions(logits, False, (), 1.0), [0, 2])
    np.testing.assert_array_equal(decisions(logits, True, (0.5, 0.9, 0.5), 1.0), [[True, False, True], [False, False, True]])


def test_older_specs_load_and_engine_file_names_stay_in_the_model_directory(tmp_path):
    spec = write_artifact(tmp_path)
    data = json.loads((tmp_path / "model_spec.json").read_text())
    for name in ("onnx_file", "int8_file", "calibration_file"):
        del data[name]
    (tmp_path / "model_spec.json").write_text(json.dumps(data))
    assert ModelSpec.load(tmp_path) == spec and spec.onnx_file == ""
    data["onnx_file"] = "../../etc/model.onnx"
    (tmp_path / "model_spec.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="file name"):
        ModelSpec.load(tmp_path)


# --- the choice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "AMX"),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX-512 BF16"),
        ({"avx2", "avx512f", "avx512_vnni"}, "AVX-512 VNNI"),
        ({"avx2", "avx512f", "avx512bw"}, "AVX-512"),
        ({"avx2", "avx_vnni"}, "AVX2 + AVX-VNNI"),
        ({"avx2", "fma"}, "AVX2"),
        ({"sse4_2"}, "other"),
        (set(), "other"),
    ],
)
def test_cpu_classes(flags, expected):
    assert cpu.cpu_class(frozenset(flags)) == expected
    assert expected in cpu.AUTO_ENGINE


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu.cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512_bf16", "amx_bf16"}
    assert cpu.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    "requested, precision, device, hooks, cpu_class, expected",
    [
        ("auto", "auto", "cpu", False, "AVX2", "onnxruntime"),
        ("auto", "auto", "cpu", False, "AVX-512 BF16", "onnxruntime"),
        ("auto", "auto", "cpu", False, "AMX", "torch"),  # torch bf16 until measured against int8 there
        ("auto", "auto", "cpu", False, "other", "torch"),
        ("auto", "fp32", "cpu", False, "AVX2", "onnxruntime"),
        ("auto", "bf16", "cpu", False, "AVX2", "torch"),
        ("auto", "int8", "cpu", False, "AMX", "onnxruntime"),
        ("auto", "auto", "cuda:0", False, "AVX2", "torch"),
        ("auto", "auto", "cpu", True, "AVX2", "torch"),  # a user's inference.py
        ("torch", "auto", "cpu", False, "AVX2", "torch"),
        ("onnxruntime", "auto", "cpu", False, "AMX", "onnxruntime"),
    ],
)
def test_engine_choice(engine_model, requested, precision, device, hooks, cpu_class, expected):
    spec = ModelSpec.load(engine_model)
    assert choose_engine(requested, precision, device, spec, engine_model, hooks, cpu_class) == expected


def test_a_model_without_engine_files_is_served_on_torch_as_before(engine_model, tmp_path):
    older = copy_model(engine_model, tmp_path / "older")
    spec = ModelSpec.load(older)  # names files that are not there: as an artifact copied without them
    assert choose_engine("auto", "auto", "cpu", spec, older, False, "AVX2") == "torch"
    (older / CALIBRATION_FILE).write_bytes((engine_model / CALIBRATION_FILE).read_bytes())
    assert choose_engine("auto", "auto", "cpu", spec, older, False, "AVX2") == "onnxruntime"  # made at load


def test_a_timm_model_goes_to_onnx_runtime_only_where_its_crop_is_reproduced(engine_model):
    # timm's center crop mode is Pillow's resize and a center crop, which the torch-free
    # preprocessing reproduces; its squash and border modes are not, and would shift answers.
    center = dataclasses.replace(ModelSpec.load(engine_model), preprocess="timm", crop_pct=0.95, crop_mode="center")
    assert choose_engine("auto", "auto", "cpu", center, engine_model, False, "AVX2") == "onnxruntime"
    squash = dataclasses.replace(center, crop_mode="squash")
    assert choose_engine("auto", "auto", "cpu", squash, engine_model, False, "AVX2") == "torch"
    for requested, precision in (("onnxruntime", "auto"), ("auto", "int8")):
        with pytest.raises(ConfigError, match="timm model with crop_mode='squash' is preprocessed as timm does"):
            choose_engine(requested, precision, "cpu", squash, engine_model, False, "AVX2")


@pytest.mark.parametrize(
    "requested, precision, device, hooks, message",
    [
        ("onnxruntime", "auto", "cuda:0", False, "runs on the CPU"),
        ("auto", "int8", "cuda:0", False, "runs on ONNX Runtime on the CPU"),
        ("onnxruntime", "auto", "cpu", True, "inference.py runs on the torch engine"),
    ],
)
def test_engine_choices_that_cannot_run_say_why(engine_model, requested, precision, device, hooks, message):
    with pytest.raises(ConfigError, match=message):
        choose_engine(requested, precision, device, ModelSpec.load(engine_model), engine_model, hooks, "AVX2")


def test_settings_refuse_precisions_their_engine_does_not_run():
    with pytest.raises(ConfigError, match="SM_VISION_PRECISION=int8 with SM_VISION_ENGINE=torch"):
        ServeConfig(engine="torch", precision="int8")
    with pytest.raises(ConfigError, match="onnxruntime runs fp32, int8"):
        ServeConfig.from_env({"SM_VISION_ENGINE": "onnxruntime", "SM_VISION_PRECISION": "bf16"})
    with pytest.raises(ConfigError, match="SM_VISION_ENGINE"):
        ServeConfig.from_env({"SM_VISION_ENGINE": "openvino"})


def test_threads_come_from_the_containers_cpus_per_forward():
    machine = Machine(device="cpu", cpus=8, memory_bytes=8 << 30, processes=1)
    assert ServeConfig().resolve(machine).threads == 2  # 4 forwards share 8 CPUs
    assert ServeConfig(workers=1).resolve(machine).threads == 8
    assert ServeConfig(threads=3).resolve(machine).threads == 3


# --- ONNX Runtime behind the guard --------------------------------------------------------


def test_onnxruntime_int8_kept_by_the_guard_and_close_to_torch(engine_model, caplog, tmp_path):
    with caplog.at_level(logging.INFO):
        served = load_classifier(engine_model, engine="onnxruntime", threads=1, scratch=tmp_path)
        served.warm_up()
    assert isinstance(served, OnnxRuntimeClassifier) and served.precision == "int8"
    assert served.guard.passed and served.guard.images == 24 and "accuracy guard: int8 kept" in caplog.text
    reference = load_classifier(engine_model, precision="fp32", engine="torch")
    batch = shape_batch(served)
    assert np.abs(served.probabilities(batch) - reference.probabilities(batch)).max() < 0.1
    assert not list(tmp_path.iterdir())  # nothing was made at load: the artifact had it all


def corrupt_int8_scales(path: Path) -> None:
    """Make the int8 model disagree with fp32: every per-channel weight scale times -3."""
    model = onnx.load(str(path))
    for initializer in model.graph.initializer:
        if initializer.name.endswith("_scale") and len(initializer.dims) == 1 and initializer.dims[0] > 1:
            initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer) * -3.0, initializer.name))
    onnx.save(model, str(path))


def test_int8_made_to_disagree_falls_back_to_fp32_logged(engine_model, tmp_path, caplog):
    broken = copy_model(engine_model, tmp_path / "broken", ("model.pt", "model_spec.json", ONNX_FILE, INT8_FILE, CALIBRATION_FILE))
    corrupt_int8_scales(broken / INT8_FILE)
    with caplog.at_level(logging.WARNING):
        served = load_classifier(broken, engine="onnxruntime", threads=1)
        assert served.precision == "int8"
        served.warm_up()
    assert served.precision == "fp32" and not served.guard.passed and served.guard.decisive_flips > 0
    assert "int8 vs fp32 on 24 images" in caplog.text and "serving fp32 instead" in caplog.text
    fp32 = load_classifier(broken, precision="fp32", engine="onnxruntime", threads=1)
    batch = shape_batch(served)
    np.testing.assert_array_equal(served.probabilities(batch), fp32.probabilities(batch))


def test_engine_files_missing_from_the_artifact_are_made_at_load(engine_model, tmp_path, caplog):
    older = copy_model(engine_model, tmp_path / "older", ("model.pt", "model_spec.json", CALIBRATION_FILE))
    with caplog.at_level(logging.INFO):
        served = load_classifier(older, engine="auto", threads=1, scratch=tmp_path / "scratch")
    if cpu.AUTO_ENGINE[cpu.cpu_class()] != "onnxruntime":
        pytest.fail(f"this test expects a CPU whose auto engine is ONNX Runtime, not {cpu.cpu_class()}")
    assert served.engine == "onnxruntime" and served.precision == "int8"
    assert {p.name for p in (tmp_path / "scratch").iterdir()} == {ONNX_FILE, INT8_FILE}
    assert "exported the model" in caplog.text and "quantized the model" in caplog.text


def test_int8_asked_of_a_model_without_a_calibration_sample_says_so(engine_model, tmp_path):
    older = copy_model(engine_model, tmp_path / "older", ("model.pt", "model_spec.json", ONNX_FILE))
    with pytest.raises(ConfigError, match="neither model.int8.onnx nor a calibration sample"):
        load_classifier(older, precision="int8", engine="auto", threads=1)
    served = load_classifier(older, engine="onnxruntime", threads=1)  # auto: fp32 without a sample for the guard
    assert served.precision == "fp32"


# --- the answer rules apply to every engine's logits --------------------------------------


@pytest.mark.parametrize("multi_label", [False, True])
def test_temperature_and_multi_label_apply_to_every_engine_alike(engine_model, tmp_path, multi_label):
    model = copy_model(engine_model, tmp_path / "m", ("model.pt", ONNX_FILE, CALIBRATION_FILE))
    spec = dataclasses.replace(ModelSpec.load(engine_model), temperature=2.5, multi_label=multi_label, int8_file="")
    spec.save(model)
    torch_side = load_classifier(model, precision="fp32", engine="torch")
    onnx_side = load_classifier(model, precision="fp32", engine="onnxruntime", threads=1)
    batch = shape_batch(onnx_side)
    logits = onnx_side.logits(batch)
    expected = scores.sigmoid(logits / 2.5) if multi_label else scores.softmax(logits / 2.5)
    np.testing.assert_allclose(onnx_side.probabilities(batch), expected, atol=1e-6)
    np.testing.assert_allclose(torch_side.probabilities(batch), expected, atol=1e-4)
    assert (onnx_side.thresholds is not None) == multi_label


def test_the_guard_counts_only_decisive_flips_and_bounds_int8_by_them_alone():
    reference = np.array([[4.0, 0.0, 0.0], [1.0, 1.001, 0.0], [0.0, 0.0, 3.0]])
    tied_flip = np.array([[4.0, 0.0, 0.0], [1.002, 1.0, 0.0], [0.0, 0.0, 3.0]])
    result = guard.compare("int8", reference, tied_flip)
    assert result.top1_flips == 1 and result.decisive_flips == 0 and result.passed
    moved = np.array([[2.0, 0.0, 0.0], [1.0, 1.001, 0.0], [0.0, 0.0, 3.0]])  # probability moved by ~0.16, same answers
    assert guard.compare("int8", reference, moved).passed and not guard.compare("bf16", reference, moved).passed
    decisive = np.array([[0.0, 4.0, 0.0], [1.0, 1.001, 0.0], [0.0, 0.0, 3.0]])
    assert guard.compare("int8", reference, decisive).decisive_flips == 1 and not guard.compare("int8", reference, decisive).passed


# --- serving through the app, and without torch --------------------------------------------


def test_micro_batched_requests_on_onnxruntime_and_metrics_name_the_engine(engine_model, serve_app):
    app = serve_app(engine_model, engine="onnxruntime", precision="int8", max_batch_size=8, wait_for_guard=True)

    async def body():
        assert await wait_ready(app) == 200
        answers = await asyncio.gather(
            *(request(app, "POST", "/invocations", png_bytes(), [("content-type", "image/png")]) for _ in range(6))
        )
        metrics = await request(app, "GET", "/metrics")
        return answers, metrics

    answers, (status, metrics) = asyncio.run(with_lifespan(app, body))
    assert all(code == 200 and json.loads(out)["predicted_label"] in CLASSES for code, out in answers)
    text = metrics.decode()
    assert f'sm_vision_model_engine{{cpu_class="{cpu.cpu_class()}",engine="onnxruntime",model="model",precision="int8"}} 1.0' in text
    assert 'sm_vision_model_guard{model="model",precision="int8",state="passed"} 1.0' in text  # checked before ready
    rows = float(next(line.split()[-1] for line in text.splitlines() if line.startswith('sm_vision_batch_size_sum{model="model"}')))
    assert rows == 6


# --- the int8 guard in the background: ready on fp32, int8 once it passes -----------------


def held_guard(monkeypatch, release: threading.Event, seen: list) -> None:
    """The background guard's fp32 forward waits for `release` (noting its thread's
    niceness), so requests meet the guard still running."""
    original = OnnxRuntimeClassifier._guard_forwards

    def forwards(self):
        reference, candidate = original(self)

        def held(batch):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            if not release.wait(120):
                raise TimeoutError("the test never released the guard")
            return reference(batch)

        return held, candidate

    monkeypatch.setattr(OnnxRuntimeClassifier, "_guard_forwards", forwards)


def test_fp32_answers_while_the_int8_guard_runs_then_int8_once_it_passes(engine_model, monkeypatch, caplog):
    release, seen = threading.Event(), []
    held_guard(monkeypatch, release, seen)
    fp32 = load_classifier(engine_model, precision="fp32", engine="onnxruntime", threads=1)
    int8 = load_classifier(engine_model, precision="int8", engine="onnxruntime", threads=1)  # its int8 session, unguarded
    with caplog.at_level(logging.INFO):
        served = load_classifier(engine_model, engine="onnxruntime", threads=1, wait_for_guard=False)
        served.warm_up()
        batch = shape_batch(served)
        assert served.precision == "fp32" and served.guard_state() == ("int8", "running")
        assert "precision fp32 (int8 once its accuracy guard passes, running in the background)" in served.describe()
        np.testing.assert_array_equal(served.probabilities(batch), fp32.probabilities(batch))
        fp32_bytes, int8_bytes = ((engine_model / name).stat().st_size for name in (ONNX_FILE, INT8_FILE))
        assert served.nbytes() == 2 * fp32_bytes + int8_bytes  # the guard's own two sessions count while it runs
        release.set()
        assert served.background.wait(120)
    assert seen and seen[0] == os.getpriority(os.PRIO_PROCESS, 0) + 10  # the guard's thread alone runs below the requests
    assert served.precision == "int8" and served.guard_state() == ("int8", "passed")
    assert served.nbytes() == int8_bytes
    np.testing.assert_allclose(served.probabilities(batch), int8.probabilities(batch), atol=1e-6)
    assert not np.allclose(int8.probabilities(batch), fp32.probabilities(batch), atol=1e-6)  # the two are told apart
    switched = re.search(
        r"accuracy guard: int8 kept \(int8 vs fp32 on 24 images: .*top-1 agreement (\d+)/24\); switched to (.*) after", caplog.text
    )
    assert switched and int(switched[1]) >= 22 and switched[2].startswith("engine onnxruntime, precision int8, CPU class"), caplog.text


def test_int8_failing_its_background_guard_stays_on_fp32_and_says_why(engine_model, tmp_path, caplog):
    broken = copy_model(engine_model, tmp_path / "broken", ("model.pt", "model_spec.json", ONNX_FILE, INT8_FILE, CALIBRATION_FILE))
    corrupt_int8_scales(broken / INT8_FILE)
    fp32 = load_classifier(broken, precision="fp32", engine="onnxruntime", threads=1)
    with caplog.at_level(logging.WARNING):
        served = load_classifier(broken, engine="onnxruntime", threads=1, wait_for_guard=False)
        served.warm_up()
        assert served.background.wait(120)
    assert served.precision == "fp32" and served.guard_state() == ("int8", "failed") and served.pending == "int8"
    assert served.background.result.decisive_flips > 0
    assert re.search(r"accuracy guard: int8 vs fp32 on 24 images: [1-9]\d* decisive top-1 flips.*; staying on fp32", caplog.text)
    batch = shape_batch(served)
    np.testing.assert_array_equal(served.probabilities(batch), fp32.probabilities(batch))


def test_the_server_is_ready_on_fp32_before_the_guard_and_metrics_follow_the_switch(engine_model, serve_app, monkeypatch):
    release, seen = threading.Event(), []
    held_guard(monkeypatch, release, seen)
    app = serve_app(engine_model, engine="onnxruntime", max_batch_size=8)  # SM_VISION_WAIT_FOR_GUARD's default: false
    engine_line = 'sm_vision_model_engine{{cpu_class="{}",engine="onnxruntime",model="model",precision="{}"}} 1.0'
    guard_line = 'sm_vision_model_guard{{model="model",precision="int8",state="{}"}} 1.0'

    async def body():
        assert await wait_ready(app) == 200
        answers = await asyncio.gather(
            *(request(app, "POST", "/invocations", png_bytes(), [("content-type", "image/png")]) for _ in range(4))
        )
        during = (await request(app, "GET", "/metrics"))[1].decode()
        release.set()
        for _ in range(600):
            after = (await request(app, "GET", "/metrics"))[1].decode()
            if guard_line.format("running") not in after:
                break
            await asyncio.sleep(0.1)
        last = await request(app, "POST", "/invocations", png_bytes(), [("content-type", "image/png")])
        return answers + [last], during, after

    answers, during, after = asyncio.run(with_lifespan(app, body))
    assert all(code == 200 and json.loads(out)["predicted_label"] in CLASSES for code, out in answers)
    assert engine_line.format(cpu.cpu_class(), "fp32") in during and guard_line.format("running") in during, during
    assert engine_line.format(cpu.cpu_class(), "int8") in after and guard_line.format("passed") in after, after


def test_closing_the_model_stops_a_running_guard(engine_model, monkeypatch):
    release, seen = threading.Event(), []
    held_guard(monkeypatch, release, seen)
    served = load_classifier(engine_model, engine="onnxruntime", threads=1, wait_for_guard=False)
    served.warm_up()
    while not seen:  # the guard is in its first forward
        time.sleep(0.01)
    release.set()
    served.close()
    assert served.background.done and served.guard_state() == ("int8", "stopped") and served.precision == "fp32"


def test_wait_for_guard_is_parsed_strictly():
    assert ServeConfig().wait_for_guard is False
    assert ServeConfig.from_env({"SM_VISION_WAIT_FOR_GUARD": "true"}).wait_for_guard is True
    with pytest.raises(ConfigError, match="SM_VISION_WAIT_FOR_GUARD"):
        ServeConfig.from_env({"SM_VISION_WAIT_FOR_GUARD": "later"})


TORCH_BLOCKED = """
import sys
for name in ("torch", "torchvision", "timm"):
    sys.modules[name] = None  # as if not installed: find_spec answers None, import raises
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    script = TORCH_BLOCKED + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_the_serving_stack_imports_and_answers_with_torch_blocked(engine_model, tmp_path):
    result = run_without_torch(f"""
        import asyncio, json, sys
        from pathlib import Path
        import serve.app, serve.cli, serve.engines, serve.hosting, serve.mms
        from container import ServeConfig
        from container.serving import Machine
        from serve.app import create_app
        from serve.machine import has_torch
        from tests.support.asgi import request, wait_ready, with_lifespan
        from tests.support.payloads import png_bytes
        assert not has_torch()
        machine = Machine(device="cpu", cpus=1, memory_bytes=8 << 30, processes=1)
        # int8 from the first answer (the guard before ready), as load_classifier's below
        config = ServeConfig(model_dir="{engine_model}", scratch_dir="{tmp_path}/scratch", opt_ml="{tmp_path}/opt_ml", wait_for_guard=True)
        app = create_app(config.resolve(machine), machine)

        async def body():
            assert await wait_ready(app) == 200
            return await request(app, "POST", "/invocations", png_bytes(), [("content-type", "image/png")])

        status, out = asyncio.run(with_lifespan(app, body))
        assert status == 200, out
        print("ANSWER", json.dumps(json.loads(out)["probabilities"]))
        print("TORCH", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision") and sys.modules[m] is not None))
    """)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "TORCH []" in result.stdout
    answer = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("ANSWER"))[len("ANSWER ") :])
    with_torch = load_classifier(engine_model, engine="onnxruntime", threads=1)
    expected = with_torch.probabilities(with_torch.preprocess(Image.open(io.BytesIO(png_bytes())).convert("RGB"))[None])[0]
    assert answer == pytest.approx(dict(zip(CLASSES, expected.tolist(), strict=True)), abs=1e-6)


@pytest.mark.parametrize("case", ["inference.py", "torchscript", "no model.onnx"])
def test_a_model_that_needs_torch_fails_naming_the_full_image(engine_model, tmp_path, case):
    model = copy_model(engine_model, tmp_path / "model")
    if case == "inference.py":
        (model / "code").mkdir()
        (model / "code" / "inference.py").write_text("import torch\n")
        for name in (ONNX_FILE, INT8_FILE, CALIBRATION_FILE):
            (model / name).write_bytes((engine_model / name).read_bytes())
    elif case == "torchscript":
        (model / "model_spec.json").unlink()
    result = run_without_torch(f"""
        from pathlib import Path
        from container import ServeConfig
        from container.serving import Machine
        from serve.hosting import SingleModel
        from serve.pools import Pools
        machine = Machine(device="cpu", cpus=1, memory_bytes=8 << 30, processes=1)
        config = ServeConfig(model_dir="{model}", scratch_dir="{tmp_path}/scratch").resolve(machine)
        hosting = SingleModel(config, Pools(config, machine))
        hosting.load()
        print("PING", hosting.ping())
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("PING"))
    assert "(500, {'status': 'failed'" in line and "the full sagemaker-vision image" in line, line
    assert "No module named" not in line
