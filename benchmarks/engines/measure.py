"""The engines side by side, inside the image (benchmarks/engines/run.py starts it).

    python measure.py --work /w [--rounds 5] [--archs resnet18,resnet50] [--classes 133,10]

Reads what run.py laid out under --work: models/<arch>/ (trained on the digits train
split by the image's own `train`), data/train and data/test (the digits split) and
photos/ (scikit-learn's two sample photos). Writes --work/out/engines.json and prints
Markdown tables.

1. Preprocessing: vision.engines.preprocess (numpy + PIL) against vision.presets'
   eval_transform (torch) on the photos at 224 px and on the digits at 32 px.
2. Accuracy: the digits test split through each engine of each trained model; top-1
   accuracy and top-1 agreement with torch fp32. int8 is calibrated on 64 training images
   (vision.engines.calibration.stratified_indices), as the artifact would carry them.
3. Speed: ms per image at batch 1 and 4, one thread and all cores, per architecture and
   class count, random-init weights (speed does not depend on their values) on the
   preprocessed photos at 224 px. Engines are interleaved: each round times every engine
   once per setting, so load from other processes hits all of them alike; the table gives
   the median over rounds and the range.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch_int8 import quantize_fx_x86  # a sibling of this script (torch's int8: measured, not served)

from serve.torch_model import fold_for_inference
from vision.cpu import cpu_class, cpu_flags
from vision.engines.calibration import stratified_indices
from vision.engines.export import export_onnx, load_trained
from vision.engines.onnx_runtime import OnnxClassifier
from vision.engines.preprocess import EvalPreprocess
from vision.engines.quantize import Int8Recipe, quantize_int8
from vision.models import build_model
from vision.presets import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size, eval_transform
from vision.scores import softmax

FLAG_PREFIXES = ("avx2", "avx512", "avx_vnni", "amx", "fma", "f16c")
DEFAULT_INT8 = "onnxruntime int8 default (reduce_range, ends fp32)"
INT8_RECIPES = {
    # every weighted layer int8: 8-bit weights, 7-bit weights, s8 activations
    "onnxruntime int8": Int8Recipe(reduce_range=False, fp32_ends=False),
    "onnxruntime int8 reduce_range": Int8Recipe(reduce_range=True, fp32_ends=False),
    "onnxruntime int8 s8s8": Int8Recipe(activations="int8", reduce_range=False, fp32_ends=False),
    # the default recipe: 7-bit weights, the first two weighted layers and the classifier fp32
    DEFAULT_INT8: Int8Recipe(),
}
CALIBRATION_COUNT = 64


def cpu_line() -> str:
    flags = sorted(f for f in cpu_flags() if f.startswith(FLAG_PREFIXES))
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?"
    )
    return f"CPU: {model}, {os.cpu_count()} logical cores; flags: {' '.join(flags) or 'none of ' + '/'.join(FLAG_PREFIXES)}"


# ---------------------------------------------------------------- engines


@dataclass
class Engine:
    name: str
    run: Callable[[np.ndarray], np.ndarray]  # float32 NCHW -> probabilities
    threads_setter: Callable[[int], None] | None = None  # torch engines share torch's global pool


def torch_engine(name: str, module: torch.nn.Module, autocast_bf16: bool = False, channels_last: bool = True) -> Engine:
    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            return torch.softmax(module(x).float(), dim=1).numpy()

    return Engine(name, run, torch.set_num_threads)


def onnx_engines(name: str, path: Path, thread_counts: list[int]) -> dict[int, Engine]:
    return {n: Engine(name, OnnxClassifier(path, threads=n).probabilities) for n in thread_counts}


def openvino_engines(name: str, path: Path, thread_counts: list[int], precision_hint: str | None) -> dict[int, Engine] | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    engines = {}
    for n in thread_counts:
        config = {"INFERENCE_NUM_THREADS": n, "PERFORMANCE_HINT": "LATENCY"}
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)

        def run(batch: np.ndarray, compiled=compiled) -> np.ndarray:
            return softmax(np.asarray(compiled(batch)[0], dtype=np.float32))

        engines[n] = Engine(name, run)
    return engines


def build_engines(
    make_module: Callable[[], torch.nn.Module], arch: str, image_size: int, calibration: np.ndarray, scratch: Path, thread_counts: list[int]
):
    """Every engine for one model (`make_module` returns a fresh eval-mode copy):
    {name: {threads: Engine}}, plus notes (sizes, times, what was skipped)."""
    scratch.mkdir(parents=True, exist_ok=True)
    module = make_module()
    notes = []
    served = fold_for_inference(make_module(), arch)
    engines: dict[str, dict[int, Engine]] = {}
    engines["torch fp32 (served: folded, channels-last)"] = dict.fromkeys(thread_counts, torch_engine("torch fp32", served))
    engines["torch bf16 autocast"] = dict.fromkeys(thread_counts, torch_engine("torch bf16", served, autocast_bf16=True))
    fp32_path = export_onnx(module, image_size, scratch / "model.onnx")
    engines["onnxruntime fp32"] = onnx_engines("onnxruntime fp32", fp32_path, thread_counts)
    int8_paths = {}
    for name, recipe in INT8_RECIPES.items():
        started = time.perf_counter()
        int8_paths[name] = quantize_int8(fp32_path, scratch / f"{name.replace(' ', '_')}.onnx", calibration, recipe)
        notes.append(f"{name}: quantized in {time.perf_counter() - started:.1f} s, {int8_paths[name].stat().st_size / 1e6:.1f} MB")
        engines[name] = onnx_engines(name, int8_paths[name], thread_counts)
    torch_int8 = quantize_fx_x86(make_module(), torch.from_numpy(calibration))
    engines["torch int8 (x86, FX PTQ)"] = dict.fromkeys(thread_counts, torch_engine("torch int8", torch_int8, channels_last=False))
    ov_fp32 = openvino_engines("openvino fp32", fp32_path, thread_counts, "f32")
    if ov_fp32 is None:
        notes.append("openvino: not installed in this image (run.py --extra-wheels adds it); skipped")
    else:
        engines["openvino fp32"] = ov_fp32
        engines["openvino int8 (from the QDQ model)"] = openvino_engines(
            "openvino int8", int8_paths["onnxruntime int8"], thread_counts, None
        )
    notes.append(f"model.onnx {fp32_path.stat().st_size / 1e6:.1f} MB")
    return engines, notes


# ---------------------------------------------------------------- 1. preprocessing


def preprocessing_agreement(images: list[Image.Image], image_size: int) -> dict:
    torch_transform = eval_transform(image_size)
    numpy_transform = EvalPreprocess(image_size, eval_resize_size(image_size), IMAGENET_MEAN, IMAGENET_STD)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    worst_levels, worst_normalized, off_by_one = 0.0, 0.0, 0
    for image in images:
        expected = torch_transform(image).numpy()
        got = numpy_transform(image)
        diff = np.abs(got - expected)
        worst_normalized = max(worst_normalized, float(diff.max()))
        levels = diff * std * 255.0  # back to 8-bit levels
        worst_levels = max(worst_levels, float(levels.max()))
        off_by_one += int((levels > 0.5).sum())
    total = sum(3 * image_size * image_size for _ in images)
    return {
        "images": len(images),
        "image_size": image_size,
        "max_diff_8bit_levels": round(worst_levels, 3),
        "max_diff_normalized": worst_normalized,
        "share_of_values_differing": off_by_one / total,
    }


# ---------------------------------------------------------------- 2. accuracy


def digits_split(root: Path, classes: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    """The PNG files of one split (folders named by class) and their class indices."""
    files = sorted(root.glob("*/*.png"))
    return files, np.array([classes.index(f.parent.name) for f in files])


def accuracy(work: Path, arch: str, thread_counts: list[int]) -> dict:
    model_dir = work / "models" / arch
    spec, _ = load_trained(model_dir)
    torch_transform = eval_transform(spec.image_size, spec.resize_size, spec.mean, spec.std, spec.interpolation)
    numpy_transform = EvalPreprocess.from_spec(spec)
    train_files, train_labels = digits_split(work / "data" / "train", spec.classes)
    chosen = stratified_indices(train_labels, CALIBRATION_COUNT)
    calibration = numpy_transform.normalize(np.stack([numpy_transform.crop(Image.open(train_files[i]).convert("RGB")) for i in chosen]))
    test_files, test_labels = digits_split(work / "data" / "test", spec.classes)
    images = [Image.open(f).convert("RGB") for f in test_files]
    torch_batch = torch.stack([torch_transform(image) for image in images]).numpy()
    numpy_batch = np.stack([numpy_transform(image) for image in images])
    threads = max(thread_counts)  # accuracy does not depend on threads: use them all to finish sooner
    engines, notes = build_engines(
        lambda: load_trained(model_dir)[1], arch, spec.image_size, calibration, work / "out" / f"acc-{arch}", [threads]
    )
    torch.set_num_threads(threads)
    rows = {}
    reference = reference_probs = None
    for name, by_threads in engines.items():
        engine = by_threads[threads]
        probs = np.concatenate([engine.run(chunk) for chunk in np.array_split(torch_batch, max(1, len(torch_batch) // 64))])
        top1 = probs.argmax(1)
        if reference is None:
            reference, reference_probs = top1, probs
        rows[name] = {
            "accuracy": float((top1 == test_labels).mean()),
            "agreement_with_fp32": float((top1 == reference).mean()),
            # What vision.precision.guard looks at, for choosing an int8 bound in serving.
            "max_probability_diff": float(np.abs(probs - reference_probs).max()),
            "mean_top1_probability_diff": float(np.abs(probs.max(1) - reference_probs.max(1)).mean()),
        }
    # For onnx_accuracy.py, which reruns the ONNX models on an emulated CPU (run.py --emulate-cpu).
    scratch = work / "out" / f"acc-{arch}"
    np.save(scratch / "test_inputs.npy", torch_batch)
    np.save(scratch / "test_labels.npy", test_labels)
    np.save(scratch / "fp32_top1.npy", reference)
    for name in ("onnxruntime fp32", DEFAULT_INT8):  # the torch-free path end to end: numpy/PIL preprocessing too
        probs = engines[name][threads].run(numpy_batch)
        top1 = probs.argmax(1)
        rows[name + " + numpy/PIL preprocessing"] = {
            "accuracy": float((top1 == test_labels).mean()),
            "agreement_with_fp32": float((top1 == reference).mean()),
        }
    # What serving's `auto` runs for the trained artifact on this CPU: its own int8 model if
    # that passed the trainer's accuracy check on the validation split, else fp32.
    served = spec.int8_file or spec.onnx_file
    top1 = OnnxClassifier(model_dir / served, threads=threads).logits(numpy_batch).argmax(1)
    check = spec.int8_check
    verdict = "no int8 check" if not check else f"int8 {'passed' if check['passed'] else 'failed'} the trainer's check"
    rows[f"served by auto: {'int8' if spec.int8_file else 'fp32'} ({verdict})"] = {
        "accuracy": float((top1 == test_labels).mean()),
        "agreement_with_fp32": float((top1 == reference).mean()),
    }
    return {
        "arch": arch,
        "images": len(test_files),
        "image_size": spec.image_size,
        "calibration_images": len(chosen),
        "engines": rows,
        "int8_check": check,
        "notes": notes,
    }


# ---------------------------------------------------------------- 3. speed


def photo_batch(photos: list[Image.Image], size: int = 224) -> np.ndarray:
    """Four real inputs: each photo and its mirror image, through the torch transform."""
    transform = eval_transform(size)
    images = [*photos, *(p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in photos)]
    return torch.stack([transform(image) for image in images[:4]]).numpy()


def calibration_from_photos(photos: list[Image.Image], count: int = 16, size: int = 224) -> np.ndarray:
    """Seeded random crops of the photos, as a stand-in calibration sample for random weights."""
    rng = np.random.default_rng(0)
    transform = eval_transform(size)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.size)))
        left, top = int(rng.integers(0, photo.size[0] - side + 1)), int(rng.integers(0, photo.size[1] - side + 1))
        crops.append(transform(photo.crop((left, top, left + side, top + side))).numpy())
    return np.stack(crops)


def time_call(engine: Engine, batch: np.ndarray, threads: int, calls: int) -> float:
    if engine.threads_setter:
        engine.threads_setter(threads)
    started = time.perf_counter()
    for _ in range(calls):
        engine.run(batch)
    return (time.perf_counter() - started) / calls / len(batch) * 1000.0


def speed(arch: str, num_classes: int, photos: list[Image.Image], work: Path, thread_counts: list[int], rounds: int) -> dict:
    torch.manual_seed(0)
    weights = build_model(arch, num_classes).state_dict()

    def make_module() -> torch.nn.Module:
        module = build_model(arch, num_classes)
        module.load_state_dict(weights)
        return module.eval()

    scratch = work / "out" / f"speed-{arch}-{num_classes}"
    engines, notes = build_engines(make_module, arch, 224, calibration_from_photos(photos), scratch, thread_counts)
    inputs = photo_batch(photos)
    settings = [(threads, batch) for threads in thread_counts for batch in (1, 4)]
    samples: dict[tuple[str, int, int], list[float]] = {}
    for threads, batch in settings:  # warm-up: first calls allocate and pick kernels
        for by_threads in engines.values():
            time_call(by_threads[threads], inputs[:batch], threads, 2)
    for _ in range(rounds):
        for threads, batch in settings:
            for name, by_threads in engines.items():
                calls = 4 if batch == 1 else 1
                samples.setdefault((name, threads, batch), []).append(time_call(by_threads[threads], inputs[:batch], threads, calls))
    rows = []
    for (name, threads, batch), values in samples.items():
        rows.append(
            {
                "engine": name,
                "threads": threads,
                "batch": batch,
                "median_ms": statistics.median(values),
                "min_ms": min(values),
                "max_ms": max(values),
            }
        )
    return {"arch": arch, "num_classes": num_classes, "rounds": rounds, "rows": rows, "notes": notes}


# ---------------------------------------------------------------- report


def markdown(result: dict) -> str:
    lines = [
        f"### Engines ({result['when']}, load average at start {result['load_average']})",
        "",
        result["cpu"],
        f"CPU class: {result['cpu_class']}",
        "",
    ]
    for check in result["preprocessing"]:
        lines.append(
            f"- numpy/PIL preprocessing vs torch eval_transform, {check['images']} images at {check['image_size']} px: "
            f"max difference {check['max_diff_8bit_levels']} 8-bit levels ({check['max_diff_normalized']:.4f} normalized), "
            f"{100 * check['share_of_values_differing']:.2f}% of values differ"
        )
    for acc in result["accuracy"]:
        lines += [
            "",
            f"#### Accuracy: {acc['arch']}, digits test split ({acc['images']} images, {acc['image_size']} px), int8 calibrated on {acc['calibration_images']} training images",
            "",
        ]
        lines += [
            result["cpu"],
            "",
            "| engine | top-1 accuracy | top-1 agreement with fp32 | largest probability difference |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in acc["engines"].items():
            diff = f"{row['max_probability_diff']:.3f}" if "max_probability_diff" in row else ""
            lines.append(f"| {name} | {100 * row['accuracy']:.2f}% | {100 * row['agreement_with_fp32']:.2f}% | {diff} |")
        if acc.get("int8_check"):
            check = acc["int8_check"]
            lines += [
                "",
                f"The trainer's int8 check on the validation split ({check['images']} images): "
                f"int8 {check['int8_accuracy']:.2f}% vs fp32 {check['fp32_accuracy']:.2f}%, bound -{check['max_drop']:g} points: "
                f"{'passed' if check['passed'] else 'failed'}",
            ]
    for run in result["speed"]:
        settings = sorted({(r["threads"], r["batch"]) for r in run["rows"]})
        header = " | ".join(f"{t} thr b{b}" for t, b in settings)
        lines += [
            "",
            f"#### Speed: {run['arch']}, {run['num_classes']} classes, 224 px, ms per image (median of {run['rounds']} interleaved rounds, [min-max])",
            "",
        ]
        lines += [result["cpu"], "", f"| engine | {header} |", "| --- |" + " --- |" * len(settings)]
        by_engine: dict[str, dict] = {}
        for r in run["rows"]:
            by_engine.setdefault(r["engine"], {})[(r["threads"], r["batch"])] = r
        base = by_engine["torch fp32 (served: folded, channels-last)"]
        for name, cells in by_engine.items():
            parts = []
            for key in settings:
                r = cells[key]
                parts.append(f"{r['median_ms']:.1f} [{r['min_ms']:.0f}-{r['max_ms']:.0f}] ({base[key]['median_ms'] / r['median_ms']:.2f}x)")
            lines.append(f"| {name} | {' | '.join(parts)} |")
        lines += ["", *(f"- {note}" for note in run["notes"])]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--classes", default="133,10")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    return parser


def main(args: argparse.Namespace) -> int:
    archs = args.archs.split(",")
    thread_counts = sorted({1, os.cpu_count() or 1})
    photos = [Image.open(p).convert("RGB") for p in sorted((args.work / "photos").glob("*.jpg"))]
    digits = [Image.open(f).convert("RGB") for f in sorted((args.work / "data" / "test").glob("*/*.png"))]
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu": cpu_line(),
        "cpu_class": cpu_class(cpu_flags()),
        "versions": {"torch": torch.__version__, "python": platform.python_version(), **package_versions()},
        "preprocessing": [preprocessing_agreement(photos, 224), preprocessing_agreement(digits, 32)],
        "accuracy": [],
        "speed": [],
    }
    print(result["cpu"], flush=True)
    if not args.skip_accuracy:
        for arch in archs:
            print(f"accuracy: {arch}", flush=True)
            result["accuracy"].append(accuracy(args.work, arch, thread_counts))
    if not args.skip_speed:
        for arch in archs:
            for num_classes in (int(c) for c in args.classes.split(",")):
                print(f"speed: {arch}, {num_classes} classes", flush=True)
                result["speed"].append(speed(arch, num_classes, photos, args.work, thread_counts, args.rounds))
    result["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = args.work / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "engines.md").write_text(text)
    print(text)
    return 0


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("onnxruntime", "onnx", "onnxscript", "openvino", "torchvision", "numpy", "pillow"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
