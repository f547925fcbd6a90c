"""Trainer throughput against a bare PyTorch loop, and the data pipeline against plain
Pillow decoding, measured side by side in one run (runs inside the image).

    python bench.py [--arch resnet18] [--batch-size 32] [--image-size 112] [--steps 12] [--rounds 3]

Every training loop sees the same model, batch, synthetic data and device; rounds
alternate (bare, trainer fp32, trainer bf16, trainer bf16 + channels-last, bare, ...) so drift hits all alike, and
medians are compared. Goals: trainer / bare >= 0.95; the bf16 / fp32 ratio decides
whether amp=auto should pick bf16 on CPUs (only at >= 1.3x, with equal accuracy).
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from train import data
from train.build import amp_dtype, make_optimizer, make_scheduler
from train.config import TrainConfig
from train.distributed import Process
from train.loop import train_one_epoch
from train.state import StopRequest, TrainState
from train.synthetic import SHAPE_CLASSES, make_image
from train.tracking import Tracker
from vision import presets
from vision.models import build_model


def bare_epoch(model, loader, optimizer, criterion, device):
    model.train()
    start = time.perf_counter()
    count = 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
        count += targets.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def trainer_epoch(model, loader, optimizer, criterion, config, process):
    """One epoch through the trainer's own train_one_epoch, in config.amp's precision."""
    autocast_dtype = amp_dtype(config, process.device)
    state = TrainState(
        config=config,
        process=process,
        stop=StopRequest(),
        model=model,
        model_without_ddp=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, len(loader)),
        scaler=torch.amp.GradScaler(process.device.type, enabled=autocast_dtype == torch.float16),
        autocast_dtype=autocast_dtype,
        classes=[str(i) for i in range(10)],
        checkpoint_dir=Path(tempfile.mkdtemp()),
        train_images=len(loader.dataset),
        tracker=Tracker([]),
    )
    start = time.perf_counter()
    train_one_epoch(state, loader, 0)
    if process.device.type == "cuda":
        torch.cuda.synchronize()
    return len(loader.dataset) / (time.perf_counter() - start)


def bench_training(args, device):
    """Bare loop vs the trainer (fp32), and the trainer in fp32 vs bf16 autocast,
    interleaved in rounds on the same model size, batch and data."""
    torch.manual_seed(0)
    n = args.batch_size * args.steps
    dataset = TensorDataset(torch.randn(n, 3, args.image_size, args.image_size), torch.randint(0, 10, (n,)))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)
    fp32 = TrainConfig(arch=args.arch, batch_size=args.batch_size, epochs=1, amp="off", log_interval=10_000)
    configs = {
        "fp32": fp32,
        "bf16": dataclasses.replace(fp32, amp="bf16"),  # what amp=auto gives on a CPU with native bf16
        "bf16_cl": dataclasses.replace(fp32, amp="bf16", channels_last=True),
    }
    process = Process(0, 0, 1, device, "bench")
    criterion = nn.CrossEntropyLoss()
    models = {name: build_model(args.arch, 10).to(device) for name in ("bare", *configs)}
    for model in models.values():
        model.load_state_dict(models["bare"].state_dict())
    models["bf16_cl"].to(memory_format=torch.channels_last)  # as train.loop.fit does with channels_last
    optimizers = {name: make_optimizer(fp32, model) for name, model in models.items()}

    def run(name):
        if name == "bare":
            return bare_epoch(models[name], loader, optimizers[name], criterion, device)
        return trainer_epoch(models[name], loader, optimizers[name], criterion, configs[name], process)

    for name in models:  # warm-up
        run(name)
    rates = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            rates[name].append(run(name))
    return {name: statistics.median(values) for name, values in rates.items()}


def bench_pipeline(args):
    folder = Path(tempfile.mkdtemp())
    paths = []
    for i, name in enumerate(sorted(SHAPE_CLASSES) * (args.images // len(SHAPE_CLASSES))):
        path = folder / f"{i}.jpg"
        make_image(name, size=args.source_size, seed=i).save(path, quality=90)
        paths.append(str(path))

    def pillow_decode():
        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                image.convert("RGB").load()
        return len(paths) / (time.perf_counter() - start)

    dataset = data.ImageSamples([(p, 0) for p in paths], presets.train_transform(args.image_size))

    def pipeline():
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        return len(paths) / (time.perf_counter() - start)

    torch.set_num_threads(1)  # per core, as one DataLoader worker runs
    pillow_decode(), pipeline()
    plain = statistics.median(pillow_decode() for _ in range(args.rounds))
    ours = statistics.median(pipeline() for _ in range(args.rounds))
    return plain, ours


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--source-size", type=int, default=500, help="JPEG side for the pipeline benchmark")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"device={device} arch={args.arch} batch={args.batch_size} image={args.image_size} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    rates = bench_training(args, device)
    bare, trainer, bf16, bf16_cl = rates["bare"], rates["fp32"], rates["bf16"], rates["bf16_cl"]
    print(
        f"training   bare loop {bare:8.1f} img/s | trainer {trainer:8.1f} img/s | ratio trainer/bare = {trainer / bare:.3f} (goal >= 0.95)"
    )
    print(
        f"precision  trainer fp32 {trainer:8.1f} img/s | trainer bf16 autocast {bf16:8.1f} img/s | ratio bf16/fp32 = {bf16 / trainer:.3f} "
        f"(amp=auto picks bf16 on CPUs with native bf16 only at >= 1.3) | bf16 + channels-last {bf16_cl:8.1f} img/s, {bf16_cl / trainer:.3f}"
    )
    plain, ours = bench_pipeline(args)
    print(
        f"pipeline   Pillow decode {plain:8.1f} img/s/core | decode + train transforms {ours:8.1f} img/s/core | "
        f"ratio = {ours / plain:.3f} ({args.source_size}px JPEG -> {args.image_size}px crop)"
    )


if __name__ == "__main__":
    main()
