"""serve.arrays, the one loader of array bodies (issue 22): every cost is checked
before it is paid, and every refusal is a typed 4xx, never a 500."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from serve import arrays, errors
from tests.support import bombs
from tests.support.payloads import npy_bytes

LIMITS = arrays.ArrayLimits()


def npz_bytes(compressed: bool = False, **named) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **named)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", "<f8", "<i8", ">i2", "|u1", "|b1", "<c8"])
def test_npy_round_trips_every_number_type_in_native_order(dtype):
    original = np.arange(24).reshape(2, 3, 4).astype(dtype)
    array = arrays.load_npy(npy_bytes(original), LIMITS)
    assert array.dtype == original.dtype.newbyteorder("=") and array.dtype.isnative
    assert np.array_equal(array, original) and array.flags.writeable


def test_fortran_order_and_zero_dimensional_arrays():
    original = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert np.array_equal(arrays.load_npy(npy_bytes(original), LIMITS), original)
    assert arrays.load_npy(npy_bytes(np.float32(2.5)), LIMITS) == 2.5


@pytest.mark.parametrize(
    "body, error, message",
    [
        (npy_bytes(np.zeros((3, 0, 0), np.float32)), errors.Unprocessable, r"shape \[3, 0, 0\] has no elements"),
        (npy_bytes(np.array(["text"])), errors.Unprocessable, "send bool, integer, float or complex"),
        (bombs.npy_header((1,), "|O") + b"\x80\x04N.", errors.BadInput, "header declares dtype object"),
        (bombs.npy_header((2,), "[('a', '<f4')]"), errors.BadInput, "not a Python literal|unknown dtype"),
        (bombs.npy_header((2,), "(2,2)<f4") + bytes(32), errors.Unprocessable, "send bool"),
        (bombs.npy_header((2**20, 2**20, 3), "|u1") + b"x" * 100, errors.BadInput, "header declares"),
        (bombs.npy_header((7,)) + bytes(29), errors.BadInput, r"declares \[7\] float32 \(28 bytes\) but the body holds 29"),
        (bombs.npy_header((1,) * 40) + bytes(4), errors.Unprocessable, "40 dimensions"),
        (b"\x93NUMPY\x02\x00" + (1 << 30).to_bytes(4, "little") + b"{", errors.BadInput, "header is 1,073,741,824 bytes"),
        (b"\x93NUMPY\x01\x00\x10\x00" + b"((((((((((((((((", errors.BadInput, "not a Python literal"),
        (b"\x93NUMPY\x09\x00", errors.BadInput, "version 9.0"),
        (b"junk", errors.BadInput, "magic"),
    ],
)
def test_npy_refusals_are_typed(body, error, message):
    with pytest.raises(error, match=message):
        arrays.load_npy(body, LIMITS)


def test_npy_over_the_cap_is_413():
    with pytest.raises(errors.PayloadTooLarge, match="above the limit"):
        arrays.load_npy(npy_bytes(np.zeros(1000, np.float32)), arrays.ArrayLimits(max_bytes=3999))


def test_empty_arrays_may_be_allowed():
    assert arrays.load_npy(npy_bytes(np.zeros((3, 0))), arrays.ArrayLimits(allow_empty=True)).shape == (3, 0)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_with_one_stored_or_deflated_member(compressed):
    original = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(arrays.load_npz(npz_bytes(compressed, x=original), LIMITS), original)


def test_npz_refusals_are_typed():
    with pytest.raises(errors.Unprocessable, match=r"\['a', 'b'\]"):
        arrays.load_npz(npz_bytes(a=np.zeros(1), b=np.ones(1)), LIMITS)
    with pytest.raises(errors.BadInput, match="not an .npz"):
        arrays.load_npz(b"PK junk", LIMITS)
    with pytest.raises(errors.Unprocessable, match="no elements"):
        arrays.load_npz(npz_bytes(x=np.zeros((3, 0, 0), np.float32)), LIMITS)
    lzma = bombs.npz({"x.npy": npy_bytes(np.zeros(4))}, zipfile.ZIP_LZMA)
    with pytest.raises(errors.Unprocessable, match="lzma"):
        arrays.load_npz(lzma, LIMITS)


def test_the_bzip2_bomb_is_refused_unread(monkeypatch):
    """Issue 22's 1,662-byte member inflated to 1.9 GiB; its compression is refused
    before a single byte is decompressed."""
    import bz2

    class NoDecompressor:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a bzip2 member was decompressed")

    monkeypatch.setattr(bz2, "BZ2Decompressor", NoDecompressor)
    for bomb in (bombs.bzip2_npz_bomb_1_9_gib(), bombs.bzip2_npz_bomb(1 << 20)):
        with pytest.raises(errors.Unprocessable, match="bzip2"):
            arrays.load_npz(bomb, LIMITS)


def test_a_declared_size_over_the_cap_is_refused_before_inflating():
    header = bombs.npy_header((1 << 28,))  # 1 GiB of float32
    body = bombs.npz({"x.npy": header + bytes(64)}, zipfile.ZIP_DEFLATED)
    tracemalloc.start()
    with pytest.raises(errors.PayloadTooLarge, match="1,073,741,824 bytes"):
        arrays.load_npz(body, LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20


def test_a_member_that_inflates_past_its_declared_size_stops_there():
    """64 MiB of deflated zeros behind a header (and zip sizes) declaring 16 floats:
    only the declared bytes are ever inflated."""
    overrun = bombs.deflate_npz_overrun(declared_floats=16, inflates_to=64 << 20)
    tracemalloc.start()
    start = time.perf_counter()
    array = arrays.load_npz(overrun, LIMITS)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert array.shape == (16,) and not array.any()
    assert peak < 4 << 20 and seconds < 0.5, (peak, seconds)


def test_the_header_and_the_zip_must_agree():
    member = npy_bytes(np.zeros(16, np.float32))
    lying = bombs.npy_header((8,)) + member[len(bombs.npy_header((16,))) :]
    with pytest.raises(errors.BadInput, match="header declares .* but the zip records"):
        arrays.load_npz(bombs.npz({"x.npy": lying}), LIMITS)


def test_a_zip_directory_listing_thousands_of_members_is_not_parsed():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(3000):
            archive.writestr(f"m{index}.npy", b"")
    with pytest.raises(errors.Unprocessable, match="directory"):
        arrays.load_npz(buffer.getvalue(), LIMITS)


def test_csv_goes_through_numpys_reader():
    assert arrays.load_csv(b"1,2,3\n4,5,6\n", LIMITS).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert arrays.load_csv(b"0.5,1.5", LIMITS).shape == (1, 2)  # one row: 1 x columns
    assert arrays.load_csv(b"1\r\n2\r\n", LIMITS).shape == (2, 1)
    assert arrays.load_csv(b"\xef\xbb\xbf1,2\n", LIMITS).tolist() == [[1, 2]]
    assert arrays.load_csv(b"1e3,-2.5\n", LIMITS).dtype == np.float32


@pytest.mark.parametrize(
    "body, error",
    [
        (b"1,two\n", errors.BadInput),
        (b"1,2\n3\n", errors.Unprocessable),
        (b"", errors.Unprocessable),
        (b"\n \n", errors.Unprocessable),
        (b"1,\xc2\xb2\n", errors.BadInput),
    ],
)
def test_csv_refusals_are_typed(body, error):
    with pytest.raises(error):
        arrays.load_csv(body, LIMITS)


def test_csv_cells_are_counted_before_parsing(monkeypatch):
    def parsed(*args, **kwargs):
        raise AssertionError("the CSV was parsed")

    monkeypatch.setattr(np, "loadtxt", parsed)
    with pytest.raises(errors.PayloadTooLarge, match="cells"):
        arrays.load_csv(b"0," * 300 + b"0", arrays.ArrayLimits(max_bytes=1000))


def test_a_6_mb_csv_costs_about_its_float32_size():
    """The list-of-floats reader took +521 MiB for 6 MB of CSV; numpy's C reader builds
    the float32 array directly."""
    body = ("\n".join(",".join(["0.12345"] * 1000) for _ in range(750)) + "\n").encode()  # 6 MB, 750k cells
    tracemalloc.start()
    array = arrays.load_csv(body, LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert array.shape == (750, 1000)
    assert peak < 6 * len(body), peak  # the text once as str, plus the array; was ~90x


def test_json_is_parsed_once_with_its_costs_counted_first(monkeypatch):
    assert arrays.load_json(b'{"instances": [[1, 2]]}', LIMITS) == {"instances": [[1, 2]]}
    with pytest.raises(errors.BadInput, match="nested too deeply"):
        arrays.load_json(b"[" * 50_000, LIMITS)
    with pytest.raises(errors.BadInput, match="nested too deeply"):
        arrays.load_json(b"[" * 33 + b"]" * 33, LIMITS)
    assert arrays.load_json(b"[" * 32 + b"]" * 32, LIMITS) is not None
    with pytest.raises(errors.PayloadTooLarge, match="values"):
        arrays.load_json(b"[" + b"0," * 100 + b"0]", arrays.ArrayLimits(max_json_values=100))
    with pytest.raises(errors.BadInput, match="not valid JSON"):
        arrays.load_json(b"not json", LIMITS)


def test_brackets_inside_strings_are_not_nesting():
    body = b'{"instances": [{"url": "http://[2001:db8::1]/' + b"[" * 100 + b'.png"}]}'
    assert arrays.json_depth(body) == 3
    assert arrays.load_json(body, LIMITS)["instances"][0]["url"].endswith(".png")
    assert arrays.json_depth(b'["\\"[[[[", [[1]]]') == 3  # an escaped quote does not end the string


def test_json_tensor():
    assert arrays.json_tensor([[1, 2.5], [3, 4]], LIMITS).dtype == np.float32
    assert arrays.json_tensor({"url": "x"}, LIMITS) is None
    assert arrays.json_tensor([], LIMITS) is None
    with pytest.raises(errors.Unprocessable, match="rectangular"):
        arrays.json_tensor([[1, 2], [3]], LIMITS)


def test_corrupt_deflate_data_is_a_400():
    """zlib.error is not an OSError: a flipped byte in a deflated member was a 500 (fuzz)."""
    body = bytearray(bombs.npz({"x.npy": npy_bytes(np.arange(64, dtype=np.float32))}, zipfile.ZIP_DEFLATED))
    start = 30 + len("x.npy")  # the local header, then the deflate stream
    body[start + 2 : start + 6] = b"\xff\xff\xff\xff"
    with pytest.raises(errors.BadInput, match="not an .npz"):
        arrays.load_npz(bytes(body), arrays.ArrayLimits())
