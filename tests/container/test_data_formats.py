"""The data users already hold, through the real image (issue 24), with scikit-learn's
handwritten digits written in each format (tests/support/digits.py):

- a Ground Truth augmented manifest in Pipe mode, RecordIO-wrapped, written by the test
  into real FIFOs while two DDP ranks read their shares (tests/support/pipes.py);
- the built-in algorithm's RecordIO: a .rec stream in Pipe mode for training and a .rec
  file (built by the independent writer, with records split around the magic number)
  in File mode for validation;
- the built-in algorithm's .lst lists beside raw images (train_lst, validation_lst),
  then served in both answer shapes (ours and the built-in's {"prediction": [...]});
- a multi-label Ground Truth manifest in File mode, trained and served (sigmoid per
  class, labels at or above each class's threshold);
- `train check-data` finding images leaked across the splits;
- bad records failing with a message that says where they are, and undecodable images
  failing the job past max_bad_fraction.

Small on purpose (a few dozen 32-pixel digits, one or two epochs, a fast model): what is
checked is that the data arrives whole and exactly once, the first data log line names
the format, the fingerprint reaches every output, and the served answers are the
model's, not accuracy (tests/container/test_train.py checks learning).
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests

from tests.support import digits as digits_data
from tests.support import recordio_writer
from tests.support.containers import Containers, host_port, mount, opt_ml, wait_exit, wait_ping
from tests.support.model_outputs import outputs_in_image
from tests.support.pipes import feeding

ARCH = "shufflenet_v2_x0_5"  # a Linear head (multi-label needs logits of both signs), ~6x faster than resnet18 here
BASE = {"arch": ARCH, "image_size": "32", "batch_size": "8", "epochs": "1", "log_interval": "2", "lr": "0.003"}
RECORDIO = "application/x-recordio"


@pytest.fixture(scope="module")
def digits():
    """80 digits (all ten classes): 60 to train on, 20 to validate."""
    found = digits_data.load(80)
    return found[:60], found[60:]


def job_root(tmp_path, hyperparameters: dict, channels: dict | None = None):
    root = opt_ml(tmp_path)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**BASE, **hyperparameters}))
    if channels is not None:
        (root / "input/config/inputdataconfig.json").write_text(json.dumps(channels))
    return root


def run_job(handle: Containers, image: str, root, command=("train",), timeout=900) -> tuple[int, str]:
    container = handle.run(image, list(command), volumes=mount(root))
    return wait_exit(container, timeout=timeout)


def metrics_of(root) -> dict:
    return json.loads((root / "output/data/metrics.json").read_text())


def spec_of(root) -> dict:
    return json.loads((root / "model/model_spec.json").read_text())


def first_data_line(logs: str) -> str:
    return next(line for line in logs.splitlines() if " train.datasets: " in line)


def assert_fingerprint_everywhere(root) -> str:
    """The check's fingerprint in data_check.json, metrics.json and the model spec alike."""
    check = json.loads((root / "output/data/data_check.json").read_text())
    fingerprint = check["fingerprint"]
    assert len(fingerprint) == 64
    assert metrics_of(root)["data"]["fingerprint"] == fingerprint
    assert metrics_of(root)["data"]["check"]["fingerprint"] == fingerprint
    assert spec_of(root)["dataset"]["fingerprint"] == fingerprint
    return fingerprint


def served(handle: Containers, image: str, model_dir, environment=None):
    server = handle.run(
        image,
        ["serve"],
        volumes={str(model_dir): {"bind": "/opt/ml/model", "mode": "ro"}},
        ports={"8080/tcp": None},
        environment={"SM_VISION_PRECISION": "fp32", **(environment or {})},
    )
    base = f"http://127.0.0.1:{host_port(server)}"
    wait_ping(base, server)
    return base


def post_png(base: str, digit, accept: str | None = None) -> requests.Response:
    headers = {"Content-Type": "image/png", **({"Accept": accept} if accept else {})}
    return requests.post(f"{base}/invocations", data=digit.png(), headers=headers, timeout=60)


# --- Pipe mode: a Ground Truth augmented manifest through FIFOs -------------------


# Images 49, 51, ..., 59 of the training stream fall to rank 1 (image i goes to consumer
# i mod 2) and cannot be decoded: rank 1's share ends 6 images (a batch) short of rank 0's.
UNDECODABLE = tuple(range(49, 60, 2))


def test_ground_truth_augmented_manifest_through_fifos_with_two_ranks(image, containers, tmp_path, digits):
    """SageMaker's AugmentedManifestFile channel: per manifest line, the image bytes then
    the label, each RecordIO-wrapped, a FIFO per pass. Two ranks (one loader worker each)
    share every pass; the check reads each channel once first. Undecodable images are
    skipped and counted, and the rank whose share runs short ends each epoch for both
    (no rank waits in a collective the other never joins: a short dist timeout would show it)."""
    train, valid = digits
    pipe = {"TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO", "ContentType": RECORDIO}
    hyperparameters = {"epochs": "2", "nproc_per_node": "2", "num_workers": "1", "attribute_names": "source-ref,class"}
    hyperparameters |= {"max_bad_fraction": "0.2", "dist_timeout_s": "90"}
    root = job_root(tmp_path, hyperparameters, {"train": pipe, "validation": pipe})
    streams = {"train": digits_data.augmented_stream(train, undecodable=UNDECODABLE), "validation": digits_data.augmented_stream(valid)}
    with feeding(root / "input/data", streams) as feeders:
        code, logs = run_job(containers, image, root)
    assert code == 0, logs
    assert "joined the job: world size 2" in logs
    assert "data format: train=augmented manifest (Pipe mode, channel train, FullyReplicated, RecordWrapperType=RecordIO, " in (
        first_data_line(logs)
    )
    assert "attributes ['source-ref', 'class']" in first_data_line(logs)
    # Every pass opened the channel's next FIFO: the check, each epoch, and (validation)
    # the final evaluation with the best weights.
    assert feeders["train"].passes == 1 + 2
    assert feeders["validation"].passes == 1 + 2 + 1
    report = metrics_of(root)
    assert report["data"]["input_mode"] == {"train": "Pipe", "validation": "Pipe"}
    assert report["data"]["format"] == {"train": "groundtruth", "validation": "groundtruth"}
    assert report["data"]["classes"] == [str(i) for i in range(10)]
    assert report["data"]["check"]["images"] == {"train": 60, "validation": 20}
    assert report["data"]["check"]["unreadable"] == 6  # found by the check's pass, met again in each epoch's
    assert report["data"]["undecodable_images"] == 2 * 6
    for row in report["epochs"]:  # each validation image counted once, over both ranks' shares
        assert sum(c["support"] for c in row["val_per_class"].values()) == 20
    assert report["final"]["split"] == "valid"
    assert_fingerprint_everywhere(root)


# --- the built-in algorithm's RecordIO, Pipe and File mode ----------------------------


def test_recordio_stream_in_pipe_mode_and_rec_file_in_file_mode(image, containers, tmp_path, digits):
    """num_classes as the built-in algorithm takes it; the validation .rec holds records
    the independent writer had to split around the magic number."""
    train, valid = digits
    root = job_root(
        tmp_path,
        {"num_classes": "10", "num_workers": "0"},
        {
            "train": {"TrainingInputMode": "Pipe", "ContentType": RECORDIO},
            "validation": {"TrainingInputMode": "File", "ContentType": RECORDIO},
        },
    )
    (root / "input/data/validation").mkdir()
    written = digits_data.write_rec(root / "input/data/validation/valid.rec", valid, split_records=(0, 7))
    assert written.split_records == [0, 7]
    with feeding(root / "input/data", {"train": digits_data.rec_stream(train)}) as feeders:
        code, logs = run_job(containers, image, root)
    assert code == 0, logs
    line = first_data_line(logs)
    assert "data format: train=recordio (Pipe mode, channel train, FullyReplicated, label-format=class-id)" in line
    assert "validation=recordio (/opt/ml/input/data/validation/valid.rec; images under /opt/ml/input/data/validation" in line
    assert feeders["train"].passes == 1 + 1  # the check, one epoch
    report = metrics_of(root)
    assert report["data"]["input_mode"] == {"train": "Pipe", "validation": "File"}
    assert sum(c["support"] for c in report["final"]["per_class"].values()) == 20
    assert spec_of(root)["classes"] == [str(i) for i in range(10)]


# --- .lst lists and raw images, served in both shapes ---------------------------------


@pytest.fixture(scope="module")
def lst_model(image, docker_client, tmp_path_factory, digits):
    """A model trained from train/ + train_lst/ and validation/ + validation_lst/ channels
    (the built-in algorithm's layout for raw images), with a planted train/validation
    duplicate the start-of-training check reports."""
    train, valid = digits
    root = job_root(tmp_path_factory.mktemp("lst"), {"num_workers": "0"})
    data = root / "input/data"
    for split, found in (("train", train), ("validation", valid)):
        paths = digits_data.write_files(data / split, found, split="images")
        digits_data.write_lst(data / f"{split}_lst" / f"{split}.lst", found, paths)
    (data / "validation/images/leaked.png").write_bytes(train[0].png())
    with open(data / "validation_lst/validation.lst", "a") as lst:
        lst.write(f"99\t{train[0].label:.6f}\timages/leaked.png\n")
    handle = Containers(docker_client)
    try:
        code, logs = run_job(handle, image, root)
    finally:
        handle.cleanup()
    assert code == 0, logs
    return root, logs


def test_lst_lists_beside_raw_images_train(lst_model):
    root, logs = lst_model
    line = first_data_line(logs)
    assert "data format: train=lst (/opt/ml/input/data/train_lst/train.lst; images under /opt/ml/input/data/train" in line
    assert "validation=lst (/opt/ml/input/data/validation_lst/validation.lst" in line
    assert "check-data: problem: leakage: 1 images in more than one split (train/validation: 1)" in logs
    check = json.loads((root / "output/data/data_check.json").read_text())
    assert check["leakage"]["pairs"] == {"train/validation": 1}
    assert metrics_of(root)["data"]["check"]["leakage"] == 1
    assert_fingerprint_everywhere(root)


def test_served_answers_in_our_shape_and_the_built_in_algorithms(image, containers, lst_model, digits):
    root, _ = lst_model
    classes = spec_of(root)["classes"]
    digit = digits[1][0]
    base = served(containers, image, root / "model")
    ours = post_png(base, digit).json()
    assert ours["predicted_label"] in classes and list(ours["probabilities"]) == classes
    # The built-in algorithm's shape, asked for by Accept: the same probabilities, in class order.
    answer = post_png(base, digit, "application/json; shape=prediction")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    assert answer.json()["prediction"] == pytest.approx([ours["probabilities"][c] for c in classes], abs=1e-6)
    assert post_png(base, digit, "application/json; shape=wrong").status_code == 406
    # ... or by the setting, for clients that cannot change: batch transform asks for JSON Lines.
    builtin = served(containers, image, root / "model", {"SM_VISION_RESPONSE_SHAPE": "prediction"})
    answer = post_png(builtin, digit, "application/jsonlines")
    assert answer.headers["content-type"].startswith("application/jsonlines")
    assert answer.text.endswith("\n") and answer.text.count("\n") == 1
    assert json.loads(answer.text)["prediction"] == pytest.approx([ours["probabilities"][c] for c in classes], abs=1e-6)
    records = "".join(json.dumps({"image": base64.b64encode(d.png()).decode()}) + "\n" for d in digits[1][:3])
    lines = requests.post(f"{builtin}/invocations", data=records, headers={"Content-Type": "application/jsonlines"}, timeout=60)
    assert [list(json.loads(line)) for line in lines.text.splitlines()] == [["prediction"]] * 3
    assert post_png(builtin, digit, "application/json; shape=labels").json()["predicted_label"] in classes


# --- multi-label, train -> serve ------------------------------------------------------


@pytest.fixture(scope="module")
def multi_label_model(image, docker_client, tmp_path_factory, digits):
    """A Ground Truth multi-label manifest (each digit also labelled even or odd, 12
    classes named by the class-map) in File mode; multi-label found from the data."""
    train, valid = digits
    root = job_root(tmp_path_factory.mktemp("multi"), {"num_workers": "0", "epochs": "2"})
    for split, found in (("train", train), ("validation", valid)):
        channel = root / "input/data" / split
        digits_data.write_files(channel, found, split="digits")
        lines = [digits_data.ground_truth_line(d, f"s3://labels/job/{d.relative_path('digits')}", multi_label=True) for d in found]
        digits_data.write_manifest(channel / f"{split}.manifest", lines)
    handle = Containers(docker_client)
    try:
        code, logs = run_job(handle, image, root)
    finally:
        handle.cleanup()
    assert code == 0, logs
    return root, logs


def test_multi_label_training_reports_per_class_f1_map_and_thresholds(multi_label_model):
    root, logs = multi_label_model
    assert "data format: train=groundtruth (/opt/ml/input/data/train/train.manifest" in first_data_line(logs)
    assert "data: 12 classes (multi-label)" in logs
    report = metrics_of(root)
    assert report["data"]["multi_label"] is True
    assert report["data"]["classes"] == digits_data.CLASS_NAMES  # named by the manifests' class-map
    assert all("val_map" in row for row in report["epochs"]) and " val_map=" in logs
    final = report["final"]
    assert 0.0 <= final["map"] <= 1.0
    assert set(final["per_class"]["even"]) == {"precision", "recall", "f1", "support", "ap", "threshold"}
    assert final["per_class"]["even"]["support"] + final["per_class"]["odd"]["support"] == 20
    spec = spec_of(root)
    assert spec["multi_label"] is True and len(spec["thresholds"]) == 12
    assert [final["per_class"][c]["threshold"] for c in spec["classes"]] == pytest.approx(spec["thresholds"])
    assert "mAP" in (root / "output/data/classification_report.txt").read_text()


def test_multi_label_model_serves_labels_above_each_threshold(image, containers, multi_label_model, digits, tmp_path):
    root, _ = multi_label_model
    spec = spec_of(root)
    thresholds = dict(zip(spec["classes"], spec["thresholds"], strict=True))
    base = served(containers, image, root / "model")
    # The model's own outputs, computed in the image apart from the server: a sigmoid per class.
    expected_probabilities = outputs_in_image(containers, image, root / "model", [d.png() for d in digits[1][:4]], tmp_path, "sigmoid")
    for digit, sigmoids in zip(digits[1][:4], expected_probabilities, strict=True):
        answer = post_png(base, digit).json()
        probabilities = answer["probabilities"]
        assert list(probabilities) == spec["classes"]
        assert list(probabilities.values()) == pytest.approx(sigmoids, abs=1e-4)
        expected = sorted((c for c in spec["classes"] if probabilities[c] >= thresholds[c]), key=lambda c: -probabilities[c])
        assert answer["predicted_labels"] == expected and answer["thresholds"] == pytest.approx(thresholds)
        prediction = post_png(base, digit, "application/json; shape=prediction").json()["prediction"]
        assert prediction == pytest.approx([probabilities[c] for c in spec["classes"]], abs=1e-6)


# --- check-data: leakage ----------------------------------------------------------------


def test_check_data_finds_images_leaked_across_splits(image, containers, tmp_path, digits):
    """Three training images copied into test/ under other names, one into valid/ under
    another class: `train check-data --strict` names the leakage and exits 1."""
    train, valid = digits
    root = opt_ml(tmp_path)
    channel = root / "input/data/training"
    digits_data.write_image_folder(channel / "train", train[:30])
    digits_data.write_image_folder(channel / "valid", valid[:10])
    digits_data.write_image_folder(channel / "test", valid[10:20])
    for number, digit in enumerate(train[:3]):
        (channel / "test" / digit.name / f"copy{number}.png").write_bytes(digit.png())
    other = next(d for d in valid if d.label != train[3].label)
    (channel / "valid" / other.name / "relabelled.png").write_bytes(train[3].png())
    command = ["train", "check-data", "--strict", "--output", "/opt/ml/output/data/check.json"]
    code, logs = run_job(containers, image, root, command, timeout=300)
    assert code == 1, logs
    assert next(line for line in logs.splitlines() if line.strip()).startswith(
        "data format: train=imagefolder (/opt/ml/input/data/training/train)"
    )
    assert "problem: leakage: 4 images in more than one split (train/test: 3, train/validation: 1)" in logs
    assert "problem: 1 identical images carry different labels" in logs
    report = json.loads((root / "output/data/check.json").read_text())
    assert report["leakage"]["count"] == 4 and report["leakage"]["pairs"] == {"train/test": 3, "train/validation": 1}
    assert report["splits"]["train"]["images"] == 30 and len(report["fingerprint"]) == 64
    code, logs = run_job(containers, image, root, ["train", "check-data"], timeout=300)
    assert code == 0, logs  # without --strict the problems are reported, not fatal


# --- bad records and undecodable images ---------------------------------------------------


def test_a_lst_path_outside_its_channel_fails_naming_the_line(image, containers, tmp_path, digits):
    train, valid = digits
    root = job_root(tmp_path, {"num_workers": "0"})
    data = root / "input/data"
    paths = digits_data.write_files(data / "train", train[:10], split="images")
    digits_data.write_lst(data / "train_lst/train.lst", train[:10], paths[:9] + ["../../config/hyperparameters.json"])
    digits_data.write_image_folder(data / "validation", valid[:10])
    code, logs = run_job(containers, image, root, timeout=300)
    failure = (root / "output/failure").read_text()
    assert code == 2, logs
    assert "train.lst line 10: path '../../config/hyperparameters.json' is outside the channel /opt/ml/input/data/train" in failure


def test_undecodable_images_past_max_bad_fraction_fail_naming_the_first(image, containers, tmp_path, digits):
    """With the check off, undecodable images are met while training: a few are skipped
    and counted, more than max_bad_fraction fail the job naming the first ones."""
    train, valid = digits
    garbage = io.BytesIO()
    for number in range(20):  # records 30..49: an image header, then bytes no decoder reads
        recordio_writer.write_record(garbage, recordio_writer.pack_image(number % 10, b"not an image %d" % number))
    stream = digits_data.rec_stream(train[:30]) + garbage.getvalue()
    root = job_root(
        tmp_path,
        {"num_workers": "0", "check_data": "false", "log_interval": "1", "num_classes": "10"},
        {
            "train": {"TrainingInputMode": "Pipe", "ContentType": RECORDIO},
            "validation": {"TrainingInputMode": "File", "ContentType": RECORDIO},
        },
    )
    (root / "input/data/validation").mkdir()
    digits_data.write_rec(root / "input/data/validation/valid.rec", valid[:10])
    with feeding(root / "input/data", {"train": stream}):
        code, logs = run_job(containers, image, root, timeout=300)
    failure = (root / "output/failure").read_text()
    assert code == 2, logs
    assert "could not be decoded, more than max_bad_fraction=0.05" in failure
    assert "train record 30 (byte " in failure  # the first undecodable record, by index and offset
