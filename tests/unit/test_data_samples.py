"""The map-style dataset (File mode) with the new sources and targets: records inside a
.rec file, multi-hot targets, and undecodable images counted across loader workers."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from tests.support import digits as digits_data
from train.data import ImageSamples
from train.formats import BadImages, MultiHot, Targets, TooManyBadImages, recordio


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(24)


def test_records_of_a_rec_file_with_multi_hot_targets(tmp_path, digits):
    digits_data.write_rec(tmp_path / "train.rec", digits, multi_label_records=set(range(len(digits))), split_records={4})
    samples = recordio.scan(tmp_path / "train.rec", multi_hot=False)
    targets = Targets(digits_data.CLASS_NAMES, "id", multi_label=True)
    dataset = ImageSamples([(s.source, targets.index(s)) for s in samples], v2.PILToTensor(), target_transform=MultiHot(12))
    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    pixels = torch.cat([b for b, _ in batches]).permute(0, 2, 3, 1).numpy()
    hot = torch.cat([t for _, t in batches]).numpy()
    assert np.array_equal(pixels, np.stack([d.rgb for d in digits]))
    assert [tuple(np.flatnonzero(row)) for row in hot] == [d.labels for d in digits]


def test_undecodable_files_are_counted_across_workers(tmp_path, digits):
    paths = []
    for digit in digits:
        path = tmp_path / f"{digit.index}.png"
        path.write_bytes(digit.png()[:60] if digit.index in (2, 9, 15) else digit.png())  # three truncated files
        paths.append((str(path), digit.label))
    bad = BadImages(max_fraction=0.05, tolerated=2)
    dataset = ImageSamples(paths, v2.PILToTensor(), bad=bad)
    images = sum(len(b) for b, _ in DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork"))
    assert images == len(digits)  # each bad one replaced by the next readable image
    assert bad.count == 3 and bad.seen == len(digits) + 3
    assert sorted(line.split(":")[0] for line in bad.examples()) == sorted(str(tmp_path / f"{i}.png") for i in (2, 9, 15))
    with pytest.raises(
        TooManyBadImages, match=r"3 of 27 images could not be decoded, more than max_bad_fraction=0.05 \(after the first 2\)"
    ):
        bad.check()
    assert bad.summary()["undecodable_images"] == 3
