"""serve.payloads against hand-written bytes: what AWS's default handler reads and
writes for a model that is not ours."""

import io
import struct

import numpy as np
import pytest
import torch

from serve import errors, payloads
from tests.support.bombs import npy_header


def test_json_nested_lists_become_float32():
    tensor = payloads.decode(b"[[1, 2.5], [3, 4]]", "application/json")
    assert tensor.dtype == torch.float32 and tensor.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    assert payloads.decode(b"[[[0.5]]]", "application/json; charset=utf-8").shape == (1, 1, 1)


def test_csv_rows_become_a_2d_float32_tensor():
    tensor = payloads.decode(b"1,2,3\n4,5,6\n", "text/csv")
    assert tensor.dtype == torch.float32 and tensor.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert payloads.decode(b"0.5,1.5", "text/csv").shape == (1, 2)  # one row: 1 x columns


def test_npy_keeps_shape_and_dtype():
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    tensor = payloads.decode(npy_header((2, 1, 2), "<f4") + data, "application/x-npy")
    assert tensor.dtype == torch.float32 and tensor.shape == (2, 1, 2) and tensor.flatten().tolist() == [1, 2, 3, 4]
    ints = payloads.decode(npy_header((3,), "<i8") + struct.pack("<3q", 7, 8, 9), "application/x-npy")
    assert ints.dtype == torch.int64 and ints.tolist() == [7, 8, 9]


def test_npz_with_one_array():
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(6, dtype=np.float32).reshape(2, 3))
    assert payloads.decode(buffer.getvalue(), "application/x-npz").tolist() == [[0, 1, 2], [3, 4, 5]]
    two = io.BytesIO()
    np.savez(two, a=np.zeros(1), b=np.ones(1))
    with pytest.raises(errors.Unprocessable, match=r"\['a', 'b'\]"):
        payloads.decode(two.getvalue(), "application/x-npz")


@pytest.mark.parametrize(
    "body, ctype, error",
    [
        (b"[[1, 2], [3]]", "application/json", errors.Unprocessable),  # ragged
        (b'{"url": "x"}', "application/json", errors.Unprocessable),
        (b"not json", "application/json", errors.BadInput),
        (b"1,two\n", "text/csv", errors.BadInput),
        (b"1,2\n3\n", "text/csv", errors.Unprocessable),
        (b"\x93NUMPY junk", "application/x-npy", errors.BadInput),
        (npy_header((1,), "|O") + b"\x80\x04N.", "application/x-npy", errors.BadInput),  # pickles refused
        (b"PK junk", "application/x-npz", errors.BadInput),
        (b"abc", "text/plain", errors.UnsupportedMediaType),
    ],
)
def test_decode_errors_are_typed(body, ctype, error):
    with pytest.raises(error):
        payloads.decode(body, ctype)


def test_encoders_write_the_bytes_aws_writes():
    prediction = torch.tensor([[0.5, 1.0], [2.0, -3.0]])
    assert payloads.encode(prediction, "application/json") == b"[[0.5, 1.0], [2.0, -3.0]]"
    assert payloads.encode(prediction, "text/csv") == b"0.5,1.0\n2.0,-3.0\n"
    assert payloads.encode(torch.tensor([0.5, 1.0]), "text/csv") == b"0.5\n1.0\n"  # 1-D: one value per line, as np.savetxt
    assert payloads.encode(prediction, "application/jsonlines") == b"[0.5, 1.0]\n[2.0, -3.0]\n"
    assert payloads.encode(prediction, "application/x-npy") == npy_header((2, 2), "<f4") + struct.pack("<4f", 0.5, 1.0, 2.0, -3.0)
    assert payloads.encode({"label": "cat"}, "application/json") == b'{"label": "cat"}'
    with pytest.raises(errors.NotAcceptable):
        payloads.encode({"label": "cat"}, "text/csv")


@pytest.mark.parametrize(
    "accept, chosen",
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("application/x-npy", "application/x-npy"),
        ("application/jsonl", "application/jsonlines"),
        ("text/html, application/x-npy;q=0.9, application/json", "application/x-npy"),  # the first we produce
    ],
)
def test_negotiate_picks_the_first_producible_type(accept, chosen):
    assert payloads.negotiate(accept) == chosen


def test_negotiate_names_what_we_produce():
    with pytest.raises(errors.NotAcceptable, match="text/csv, application/x-npy, application/jsonlines"):
        payloads.negotiate("image/png")
