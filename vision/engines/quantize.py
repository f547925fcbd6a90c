"""fp32 model.onnx -> int8 model, by ONNX Runtime static quantization. No torch.

QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8
kernels: QLinearConv, QLinearAdd, QGemm), weights int8 per output channel, activations
calibrated by their min/max on the calibration sample (vision/engines/calibration.py).

The recipe knobs that matter on x86 (ONNX Runtime's own guidance, measured in
benchmarks/engines):
- activations uint8 + weights int8 (U8S8) is x86's fast path. Its AVX2 kernel adds pairs
  of u8 x s8 products in 16 bits, which can saturate; CPUs with VNNI (AVX-512 VNNI,
  AVX-VNNI) accumulate in 32 bits and never do.
- reduce_range quantizes weights to 7 bits, which keeps that AVX2 sum below the 16-bit
  limit (255 * 63 * 2 < 32767) at the cost of one bit of weight precision.
- the first two weighted layers and the classifier stay fp32 (fp32_ends), where int8's
  error costs a classifier most accuracy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}


@dataclass(frozen=True)
class Int8Recipe:
    activations: str = "uint8"  # uint8 (U8S8, x86's fast path) or int8 (S8S8)
    # 7-bit weights. On by default: the serving CPU is unknown when the model is quantized,
    # and without it AVX2 CPUs (no VNNI) saturate (ResNet-50 on the digits: -2.8 points);
    # on VNNI CPUs it cost no measurable speed or accuracy (benchmarks/engines).
    reduce_range: bool = True
    per_channel: bool = True
    method: str = "minmax"
    calibration_batch: int = 8
    # The first two weighted layers (the stem) and the last (the classifier) stay fp32.
    # One at a time, these were the layers whose int8 error moved a trained ResNet-50's
    # logits most; kept fp32, its int8 top-1 on the digits test split went from 0.8-1.9
    # points below fp32 to equal (ResNet-18: equal either way), for 20% more time per
    # image at 224 px on ResNet-50 and 43% on ResNet-18, whose 7x7 stem is a larger share
    # of its work (one thread; benchmarks/engines, docs/benchmarks.md).
    fp32_ends: bool = True

    def __post_init__(self):
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations={self.activations!r}: choose one of {', '.join(ACTIVATION_TYPES)}")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: choose one of {', '.join(METHODS)}")


class _BatchReader(CalibrationDataReader):
    """The calibration sample in batches; `set_range` lets the calibrator take them one
    stride at a time (CalibStridedMinMax)."""

    def __init__(self, input_name: str, sample: np.ndarray, batch: int):
        self._batches = np.array_split(sample, max(1, -(-len(sample) // batch)))
        self._input_name = input_name
        self._pending: Iterator[np.ndarray] = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self._batches[start_index:end_index])

    def get_next(self):
        chunk = next(self._pending, None)
        return None if chunk is None else {self._input_name: np.ascontiguousarray(chunk, dtype=np.float32)}


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, recipe: Int8Recipe = Int8Recipe()) -> Path:
    """Write the int8 model for `fp32_path` to `int8_path`; `calibration` is the
    normalized calibration sample (float32 NCHW, EvalPreprocess.normalize of the crops)."""
    if calibration.dtype != np.float32 or calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty float32 NCHW batch, got {calibration.dtype} {calibration.shape}")
    model = onnx.load(str(fp32_path), load_external_data=False)
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Constant folding and ONNX shape inference. Symbolic shape inference (sympy) is for
        # dynamic shapes beyond the batch axis, which image classifiers do not have.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        weighted = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in WEIGHTED_OPS]
        quantize_static(
            str(prepared),
            str(int8_path),
            _BatchReader(input_name, calibration, recipe.calibration_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=ACTIVATION_TYPES[recipe.activations],
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[recipe.method],
            nodes_to_exclude=weighted[:2] + weighted[-1:] if recipe.fp32_ends else [],
            # Reduce each batch's min/max as it comes and merge, instead of holding every
            # activation of the whole sample at once (ResNet-50 at 224 px: tens of MB per
            # image). Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it drops the
            # batches it clears instead of reducing them.
            extra_options={"CalibStridedMinMax": 1} if recipe.method == "minmax" else {},
        )
    return Path(int8_path)
