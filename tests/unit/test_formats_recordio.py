"""RecordIO: the project's reader against .rec files made by the independent writer in
tests/support (from MXNet's documented format), on scikit-learn's digits."""

import io

import numpy as np
import pytest

from tests.support import digits as digits_data
from tests.support import recordio_writer
from train.formats import DataFormatError, RecordRef, image_source, recordio
from vision import images


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(200)


@pytest.fixture
def rec(tmp_path, digits):
    path = tmp_path / "train.rec"
    written = digits_data.write_rec(path, digits, multi_label_records={3, 7}, split_records={5, 11})
    return path, written


def pixels(source) -> np.ndarray:
    return np.asarray(images.load_rgb(image_source(source), images.ImageLimits()))


def test_file_mode_reads_every_digit_with_its_label_and_pixels(rec, digits):
    path, written = rec
    assert written.split_records == [5, 11]  # the writer really split two records into parts
    assert written.cflags[5][0] == 1 and written.cflags[5][-1] == 3
    samples = recordio.scan(path, multi_hot=False)
    assert len(samples) == len(digits)
    for number, (sample, digit) in enumerate(zip(samples, digits, strict=True)):
        assert sample.labels == (digit.labels if number in (3, 7) else (digit.label,))
        assert isinstance(sample.source, RecordRef) and sample.key == f"train.rec#{number}"
        assert np.array_equal(pixels(sample.source), digit.rgb), number


def test_stream_and_file_reads_agree(rec):
    path, _ = rec
    with open(path, "rb") as stream:
        streamed = list(recordio.stream_samples(stream, "train", multi_hot=False))
    scanned = recordio.scan(path, multi_hot=False)
    assert [s.labels for s in streamed] == [s.labels for s in scanned]
    assert [s.source for s in streamed] == [image_source(s.source) for s in scanned]


def test_continuation_record_is_joined_with_the_magic_number(rec, digits):
    path, _ = rec
    payloads = [r.payload for r in recordio.iter_records(io.BytesIO(path.read_bytes()), "train.rec")]
    expected = recordio_writer.pack_image(digits[5].label, digits_data.magic_png(digits[5], 24), record_id=digits[5].index)
    assert payloads[5] == expected and recordio.MAGIC_BYTES in payloads[5]


def test_project_encoder_writes_what_the_independent_writer_writes(digits):
    for payload in (b"", b"abc", digits[0].png(), recordio_writer.pack_image(1, digits_data.magic_png(digits[1], 24))):
        independent = io.BytesIO()
        recordio_writer.write_record(independent, payload)
        assert recordio.encode_record(payload) == independent.getvalue()


def test_multi_hot_labels_become_class_ids(tmp_path, digits):
    path = tmp_path / "hot.rec"
    with open(path, "wb") as out:
        for digit in digits[:5]:
            vector = [float(i in digit.labels) for i in range(12)]
            recordio_writer.write_record(out, recordio_writer.pack_image(vector, digit.png()))
    samples = recordio.scan(path, multi_hot=True)
    assert [s.labels for s in samples] == [d.labels for d in digits[:5]]
    with open(path, "ab") as out:
        recordio_writer.write_record(out, recordio_writer.pack_image([0.0, 2.0], digits[5].png()))
    with pytest.raises(DataFormatError, match=r"hot.rec record 5 .*multi-hot needs 0/1 values"):
        recordio.scan(path, multi_hot=True)


def test_truncated_record_names_its_index_and_offset(rec):
    path, _ = rec
    data = path.read_bytes()
    offsets = [r.offset for r in recordio.iter_records(io.BytesIO(data), "x")]
    cut = path.with_name("cut.rec")
    cut.write_bytes(data[: offsets[9] + 40])  # record 9's header and part of its bytes
    with pytest.raises(DataFormatError, match=rf"cut.rec: record 9 at byte {offsets[9]} is truncated"):
        recordio.scan(cut, multi_hot=False)
    with pytest.raises(DataFormatError, match=rf"record 9 at byte {offsets[9]} is truncated"):
        list(recordio.stream_samples(io.BytesIO(cut.read_bytes()), "train", multi_hot=False))
    cut.write_bytes(data[: offsets[9] + 5])  # inside the 8-byte header
    with pytest.raises(DataFormatError, match=rf"record 9 at byte {offsets[9]} is truncated: 5 bytes of its 8-byte header"):
        recordio.scan(cut, multi_hot=False)


def test_split_record_cut_inside_its_parts(rec):
    path, _ = rec
    data = path.read_bytes()
    offsets = [r.offset for r in recordio.iter_records(io.BytesIO(data), "x")]
    first_part_end = offsets[5] + 8 + (int.from_bytes(data[offsets[5] + 4 : offsets[5] + 8], "little") & ((1 << 29) - 1))
    cut = path.with_name("cut.rec")
    cut.write_bytes(data[:first_part_end])
    with pytest.raises(DataFormatError, match=rf"record 5 at byte {offsets[5]} is cut off"):
        list(recordio.iter_records(io.BytesIO(cut.read_bytes()), "cut.rec"))


def test_bad_magic_and_bad_header_are_located(tmp_path, digits):
    path = tmp_path / "bad.rec"
    good = io.BytesIO()
    recordio_writer.write_record(good, recordio_writer.pack_image(1, digits[0].png()))
    path.write_bytes(good.getvalue() + b"\x00\x01\x02\x03" * 4)
    with pytest.raises(DataFormatError, match=rf"bad.rec: record 1 at byte {len(good.getvalue())}: magic number 0x03020100"):
        recordio.scan(path, multi_hot=False)
    short = tmp_path / "short.rec"
    with open(short, "wb") as out:
        recordio_writer.write_record(out, b"\x02\x00\x00\x00" + b"\x00" * 20)  # flag 2 but no labels after the header
    with pytest.raises(DataFormatError, match="short.rec record 0 .*says 2 labels follow"):
        recordio.scan(short, multi_hot=False)


def test_fractional_label_is_not_a_class_id(tmp_path, digits):
    path = tmp_path / "frac.rec"
    with open(path, "wb") as out:
        recordio_writer.write_record(out, recordio_writer.pack_image(2.5, digits[0].png()))
    with pytest.raises(DataFormatError, match=r"frac.rec record 0 \(byte 0\): label 2.5 is not a class id"):
        recordio.scan(path, multi_hot=False)
