"""Trainer throughput against a bare PyTorch loop, and the data pipeline against plain
Pillow decoding, measured side by side in one run (runs inside the image).

    python bench.py [--arch resnet18] [--batch-size 32] [--image-size 112] [--steps 12] [--rounds 3]

Both training loops see the same model, batch, synthetic data and device; rounds
alternate (bare, trainer, bare, trainer, ...) so drift hits both, and each side's
median is compared. Goal: trainer / bare >= 0.95.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from train import data, presets
from train.config import TrainConfig
from train.distributed import DistInfo
from train.loop import StopRequest, amp_dtype, make_optimizer, make_scheduler, train_one_epoch
from train.models import build_model
from train.synthetic import SHAPE_CLASSES, make_image


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


def trainer_epoch(model, loader, optimizer, criterion, config, info):
    scheduler = make_scheduler(config, optimizer, len(loader))
    dtype = amp_dtype(config, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=dtype == torch.float16)
    start = time.perf_counter()
    train_one_epoch(model, criterion, optimizer, scheduler, scaler, loader, config, info, 0, 0, StopRequest(), dtype, lambda step: None)
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    return len(loader.dataset) / (time.perf_counter() - start)


def bench_training(args, device):
    torch.manual_seed(0)
    n = args.batch_size * args.steps
    dataset = TensorDataset(torch.randn(n, 3, args.image_size, args.image_size), torch.randint(0, 10, (n,)))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)
    config = TrainConfig(arch=args.arch, batch_size=args.batch_size, epochs=1, amp="off", log_interval=10_000)
    info = DistInfo(0, 0, 1, device, "bench")
    criterion = nn.CrossEntropyLoss()
    bare_model = build_model(args.arch, 10).to(device)
    trainer_model = build_model(args.arch, 10).to(device)
    trainer_model.load_state_dict(bare_model.state_dict())
    bare_opt = make_optimizer(config, bare_model)
    trainer_opt = make_optimizer(config, trainer_model)
    bare_epoch(bare_model, loader, bare_opt, criterion, device)  # warm-up both
    trainer_epoch(trainer_model, loader, trainer_opt, criterion, config, info)
    bare, trainer = [], []
    for _ in range(args.rounds):
        bare.append(bare_epoch(bare_model, loader, bare_opt, criterion, device))
        trainer.append(trainer_epoch(trainer_model, loader, trainer_opt, criterion, config, info))
    return statistics.median(bare), statistics.median(trainer)


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
    bare, trainer = bench_training(args, device)
    print(
        f"training   bare loop {bare:8.1f} img/s | trainer {trainer:8.1f} img/s | ratio trainer/bare = {trainer / bare:.3f} (goal >= 0.95)"
    )
    plain, ours = bench_pipeline(args)
    print(
        f"pipeline   Pillow decode {plain:8.1f} img/s/core | decode + train transforms {ours:8.1f} img/s/core | "
        f"ratio = {ours / plain:.3f} ({args.source_size}px JPEG -> {args.image_size}px crop)"
    )


if __name__ == "__main__":
    main()
