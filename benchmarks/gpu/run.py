"""The GPU numbers, in one command, on a machine with PyTorch and nothing else.

    python3 benchmarks/gpu/run.py                 # on a GPU machine, from the repository root (~2-4 min)
    python3 benchmarks/gpu/run.py --dry-run       # tiny sizes on the CPU: checks the script, measures nothing

Needs torch and torchvision only (and this repository: the model factory in vision/ and
the serving fold in serve/model.py, pure Python over torch). No docker, no network, no
weights, no data: inputs are made in memory. Measures:

1. train   a ResNet-50 training step with AMP (fp16 + GradScaler, as NVIDIA's
           DeepLearningExamples; bf16 autocast where the GPU has it), channels-last, SGD
           with momentum, synthetic 224 px batches: img/s. Anchor: DeepLearningExamples'
           ResNet-50 v1.5, 2,470 img/s on one A100 80GB with AMP at batch 256.
2. forward the served forward (ResNet-50, 133 classes, BatchNorm folded, channels-last,
           exactly serve.model.fold_for_inference) at batch 1/16/64 in eager fp32 (cuDNN may
           use TF32, torch's default), fp16 and bf16 autocast: ms per batch and img/s.
3. decode  JPEG decoding by nvJPEG (torchvision.io.decode_jpeg on CUDA, batched) against
           one CPU thread (the same call on CPU), at ImageNet's typical 500x375 and at
           1600x1200: img/s.
4. nccl    NCCL initialisation on every visible GPU (one process each, loopback TCP
           rendezvous): init_process_group, the first all_reduce (communicator set-up),
           then a steady 1 MB all_reduce.

Writes --out/gpu.json and --out/gpu.md (default benchmarks/results/gpu). With --dry-run
every part runs at tiny sizes on the CPU; CUDA-only parts (nvJPEG, NCCL, fp16/bf16 on
the GPU) print "needs CUDA" and are skipped, and the NCCL code path runs with gloo.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.io import decode_jpeg, encode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: vision/ and serve/
from serve.model import fold_for_inference  # noqa: E402
from vision.models import build_model  # noqa: E402

ANCHOR_TRAIN_IMG_S = 2470  # DeepLearningExamples ResNet-50 v1.5, AMP, batch 256, one A100 80GB


@dataclass(frozen=True)
class Sizes:
    image: int
    train_batch: int
    train_warmup: int
    train_steps: int
    forward_batches: tuple[int, ...]
    forward_iters: int
    decode_sizes: tuple[tuple[int, int], ...]
    decode_images: int
    decode_rounds: int


FULL = Sizes(224, 256, 15, 40, (1, 16, 64), 30, ((500, 375), (1600, 1200)), 256, 5)
DRY = Sizes(32, 2, 1, 1, (1, 2), 1, ((64, 48),), 4, 1)


def say(message: str) -> None:
    print(message, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_dtypes(device: torch.device) -> list[torch.dtype]:
    """The reduced precisions to measure: fp16 from compute capability 7.0, bf16 from 8.0."""
    if device.type != "cuda":
        return []
    major, minor = torch.cuda.get_device_capability(device)
    return [d for d, need in ((torch.float16, (7, 0)), (torch.bfloat16, (8, 0))) if (major, minor) >= need]


def environment(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpus=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            nccl=nccl_version(),
        )
    return info


def nccl_version() -> str | None:
    try:
        import torch.cuda.nccl

        version = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - a build without NCCL: the collective part says so when it fails
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


# ---------------------------------------------------------------- 1. training step


def train_step_rate(device: torch.device, sizes: Sizes, dtype: torch.dtype | None) -> dict:
    """img/s of forward + backward + SGD step, AMP in `dtype` (None: fp32)."""
    torch.manual_seed(0)
    model = build_model("resnet50", 1000).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    images = torch.randn(sizes.train_batch, 3, sizes.image, sizes.image, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (sizes.train_batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = loss_fn(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(sizes.train_warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(sizes.train_steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    rate = sizes.train_batch * sizes.train_steps / elapsed
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"precision": dtype_name(dtype), "batch": sizes.train_batch, "img_s": rate, "peak_memory_gib": peak}


def dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


# ---------------------------------------------------------------- 2. served forward


def forward_rates(device: torch.device, sizes: Sizes) -> list[dict]:
    torch.manual_seed(0)
    module = fold_for_inference(build_model("resnet50", 133).eval(), "resnet50").to(device)
    rows = []
    for batch in sizes.forward_batches:
        x = torch.randn(batch, 3, sizes.image, sizes.image, device=device).contiguous(memory_format=torch.channels_last)
        for dtype in [None, *amp_dtypes(device)]:
            context = (lambda d=dtype: torch.autocast(device.type, dtype=d)) if dtype else nullcontext
            with torch.inference_mode():
                for _ in range(3):
                    with context():
                        torch.softmax(module(x).float(), dim=1)
                synchronize(device)
                times = []
                for _ in range(sizes.forward_iters):
                    started = time.perf_counter()
                    with context():
                        torch.softmax(module(x).float(), dim=1)
                    synchronize(device)
                    times.append(time.perf_counter() - started)
            ms = statistics.median(times) * 1000
            rows.append({"batch": batch, "precision": dtype_name(dtype), "ms_per_batch": ms, "img_s": batch / ms * 1000})
    return rows


# ---------------------------------------------------------------- 3. JPEG decode


def photo_like_jpeg(width: int, height: int, seed: int) -> torch.Tensor:
    """A JPEG (as its bytes in a uint8 tensor) of smooth shading with noise: compresses and
    decodes like a photo, unlike flat colour or pure noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 32), max(2, width // 32), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    noisy = (smooth * 200 + torch.rand(3, height, width, generator=generator) * 55).clamp(0, 255).to(torch.uint8)
    return encode_jpeg(noisy, quality=90)


def decode_rates(device: torch.device, sizes: Sizes) -> list[dict]:
    rows = []
    for width, height in sizes.decode_sizes:
        jpegs = [photo_like_jpeg(width, height, seed) for seed in range(8)]
        batch = [jpegs[i % len(jpegs)] for i in range(sizes.decode_images)]
        mean_kb = statistics.mean(j.numel() for j in jpegs) / 1000
        cpu_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            decode_jpeg(batch[0])
            started = time.perf_counter()
            for data in batch:
                decode_jpeg(data)
            cpu_rate = len(batch) / (time.perf_counter() - started)
        finally:
            torch.set_num_threads(cpu_threads)
        row = {"size": f"{width}x{height}", "jpeg_kb": round(mean_kb, 1), "cpu_1_thread_img_s": cpu_rate, "gpu_img_s": None}
        if device.type == "cuda":
            decode_jpeg(batch[:8], device=device)
            synchronize(device)
            rates = []
            for _ in range(sizes.decode_rounds):
                started = time.perf_counter()
                decode_jpeg(batch, device=device)
                synchronize(device)
                rates.append(len(batch) / (time.perf_counter() - started))
            row["gpu_img_s"] = statistics.median(rates)
        else:
            say(f"decode {width}x{height} on the GPU (nvJPEG): needs CUDA, skipped")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 4. NCCL initialisation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collective_worker(rank: int, world: int, port: int, backend: str, results) -> None:
    import torch.distributed as dist

    use_cuda = backend == "nccl"
    device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    started = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    init_s = time.perf_counter() - started
    tensor = torch.ones(262_144, device=device)  # 1 MB of fp32
    started = time.perf_counter()
    dist.all_reduce(tensor)
    synchronize(device)
    first_s = time.perf_counter() - started
    times = []
    for _ in range(20):
        started = time.perf_counter()
        dist.all_reduce(tensor)
        synchronize(device)
        times.append(time.perf_counter() - started)
    if rank == 0:
        results.put({"backend": backend, "world_size": world, "init_process_group_s": init_s, "first_all_reduce_s": first_s,
                     "steady_all_reduce_1mb_ms": statistics.median(times) * 1000})  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def collective_init(device: torch.device) -> dict:
    import torch.multiprocessing as mp

    if device.type == "cuda":
        backend, world = "nccl", torch.cuda.device_count()
    else:
        say("NCCL initialisation: needs CUDA; running the same code path with gloo, one process")
        backend, world = "gloo", 1
    context = mp.get_context("spawn")
    results = context.Queue()
    started = time.perf_counter()
    mp.start_processes(_collective_worker, args=(world, free_port(), backend, results), nprocs=world, join=True, start_method="spawn")
    row = results.get(timeout=60)
    row["spawn_to_done_s"] = time.perf_counter() - started
    return row


# ---------------------------------------------------------------- report


def markdown(result: dict) -> str:
    env = result["environment"]
    where = f"{env.get('gpu', 'CPU (dry run)')}, torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}"
    lines = [
        f"### GPU benchmark ({result['when']}{', DRY RUN: tiny sizes on the CPU, not a measurement' if result['dry_run'] else ''})",
        "",
        where,
        "",
    ]
    lines += [
        "| ResNet-50 training step | batch | img/s | vs DeepLearningExamples A100 AMP (2,470) | peak memory GiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["train"]:
        peak = "" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f}"
        lines.append(f"| {row['precision']} | {row['batch']} | {row['img_s']:.0f} | {row['img_s'] / ANCHOR_TRAIN_IMG_S:.2f}x | {peak} |")
    lines += [
        "",
        "| served forward (ResNet-50/133, folded, channels-last) | batch | ms per batch | img/s | vs fp32 |",
        "| --- | --- | --- | --- | --- |",
    ]
    fp32 = {row["batch"]: row["ms_per_batch"] for row in result["forward"] if row["precision"] == "fp32"}
    for row in result["forward"]:
        lines.append(
            f"| {row['precision']} | {row['batch']} | {row['ms_per_batch']:.2f} | {row['img_s']:.0f} | {fp32[row['batch']] / row['ms_per_batch']:.2f}x |"
        )
    lines += ["", "| JPEG decode | mean JPEG KB | CPU, 1 thread img/s | GPU (nvJPEG, batched) img/s |", "| --- | --- | --- | --- |"]
    for row in result["decode"]:
        gpu = "needs CUDA" if row["gpu_img_s"] is None else f"{row['gpu_img_s']:.0f}"
        lines.append(f"| {row['size']} | {row['jpeg_kb']} | {row['cpu_1_thread_img_s']:.0f} | {gpu} |")
    c = result["collective"]
    lines += [
        "",
        f"Process group ({c['backend']}, {c['world_size']} process(es)): init_process_group {c['init_process_group_s']:.2f} s, "
        f"first all_reduce {c['first_all_reduce_s']:.2f} s, steady 1 MB all_reduce {c['steady_all_reduce_1mb_ms']:.2f} ms, "
        f"spawn to done {c['spawn_to_done_s']:.1f} s.",
    ]
    lines += ["", *(f"- skipped: {line}" for line in result["skipped"])] if result["skipped"] else []
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; CUDA-only parts are skipped")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    parser.add_argument("--train-batch", type=int, help=f"default {FULL.train_batch} (DeepLearningExamples' AMP batch)")
    return parser


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.dry_run:
        device, sizes = torch.device("cpu"), DRY
        torch.set_num_threads(1)  # tiny tensors: threads only add waiting, and on a shared CI machine much of it
    elif not torch.cuda.is_available():
        say("no CUDA device: this benchmark measures GPUs (use --dry-run to check it on a CPU)")
        return 2
    else:
        device, sizes = torch.device("cuda"), FULL
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels, as training does
    if args.train_batch:
        sizes = Sizes(**{**sizes.__dict__, "train_batch": args.train_batch})
    skipped = []
    if device.type != "cuda":
        skipped = ["training and forward in fp16/bf16 (needs CUDA)", "nvJPEG decode (needs CUDA)", "NCCL (needs CUDA; gloo ran instead)"]
        say("fp16/bf16 training and forward: needs CUDA, skipped (fp32 runs at tiny sizes)")
    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "dry_run": args.dry_run, "environment": environment(device), "skipped": skipped}
    say(f"environment: {json.dumps(result['environment'])}")
    result["train"] = []
    for dtype in amp_dtypes(device) or [None]:
        say(f"train: ResNet-50 {dtype_name(dtype)} step, batch {sizes.train_batch}")
        result["train"].append(train_step_rate(device, sizes, dtype))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the step's model and batch are gone: hand their memory back before the next part
    say("forward: ResNet-50/133 served forward")
    result["forward"] = forward_rates(device, sizes)
    say("decode: JPEG")
    result["decode"] = decode_rates(device, sizes)
    say("collective: process group initialisation")
    result["collective"] = collective_init(device)
    result["elapsed_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "gpu.md").write_text(text)
    say(text)
    say(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'} in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
