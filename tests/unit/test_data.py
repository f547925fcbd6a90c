from PIL import Image

from train import data


def test_holdout_split_is_deterministic_and_stratified():
    samples = [(f"{label}_{i}.png", label) for label in range(3) for i in range(20)]
    train_a, valid_a = data.holdout_split(samples, 0.25, seed=1)
    train_b, valid_b = data.holdout_split(list(reversed(samples)), 0.25, seed=1)
    assert valid_a == valid_b and train_a == train_b
    assert [sum(1 for _, label in valid_a if label == k) for k in range(3)] == [5, 5, 5]
    assert not set(train_a) & set(valid_a)


def test_shard_sampler_sees_every_sample_once_for_evaluation():
    shards = [list(data.ShardSampler(10, rank, 3, seed=0, shuffle=False, pad=False)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


def test_shard_sampler_pads_training_shards_to_equal_length_and_resumes():
    samplers = [data.ShardSampler(10, rank, 3, seed=0, shuffle=True, pad=True) for rank in range(3)]
    for sampler in samplers:
        sampler.set_epoch(4)
    shards = [list(s) for s in samplers]
    assert {len(s) for s in shards} == {4}
    assert set(i for s in shards for i in s) == set(range(10))
    samplers[0].set_epoch(4, skip=2)
    assert list(samplers[0]) == shards[0][2:]
    samplers[0].set_epoch(5)
    assert list(samplers[0]) != shards[0]  # reshuffled per epoch


def test_truncated_image_is_replaced_not_fatal(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(good)
    bad = tmp_path / "bad.jpg"
    Image.new("RGB", (64, 64), (0, 255, 0)).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    dataset = data.ImageSamples([(str(bad), 0), (str(good), 1)], transform=lambda image: image.size)
    assert dataset[0] == ((8, 8), 1)


def test_augment_false_trains_on_the_pixels_the_server_sees():
    import torch

    from train.config import resolve_config
    from train.loaders import transforms
    from train.synthetic import make_image
    from vision import presets

    picture = make_image("red_circle", size=80)
    prep = presets.preprocessing_for("resnet18", None, image_size=64)
    served = presets.eval_transform_for(prep)(picture)
    training, evaluation = transforms(resolve_config({"augment": "false"}, []), prep)
    assert all(torch.equal(training(picture), served) for _ in range(5))
    assert torch.equal(evaluation(picture), served)
    torch.manual_seed(0)
    training, evaluation = transforms(resolve_config({}, []), prep)  # augment=true: random crops and flips
    assert training(picture).shape == served.shape and not all(torch.equal(training(picture), served) for _ in range(5))
    assert torch.equal(evaluation(picture), served)
