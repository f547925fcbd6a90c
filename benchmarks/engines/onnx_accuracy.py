"""The ONNX models of measure.py's accuracy section, rerun on another CPU: top-1 accuracy
and agreement with torch fp32 (as measured natively). No torch.

    qemu-x86_64-static -cpu Haswell-v4 python onnx_accuracy.py --work /w --cpu Haswell-v4

run.py --emulate-cpu runs it under QEMU's user-mode emulator, whose CPUID reports the
named CPU model: ONNX Runtime then picks that CPU's kernels (AVX2 without VNNI for
Haswell), so int8 accuracy can be measured for a CPU class this machine is not. Timings
under emulation mean nothing and are not taken. It first checks that the kernels really
changed: on AVX2 without VNNI, ONNX Runtime's u8 x s8 GEMM adds pairs of products in 16
bits and saturates (255 * 127 * 2 > 32767); with VNNI, or with 7-bit weights, it does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from vision.engines.onnx_runtime import OnnxClassifier


def u8s8_gemm_saturates(weight: int) -> bool:
    """One MatMulInteger (the u8 x s8 GEMM under QLinearConv) of all-255 activations with
    all-`weight` weights: does it lose the exact sum?"""
    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k]), helper.make_tensor_value_info("B", TensorProto.INT8, [k, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"A": np.full((1, k), 255, np.uint8), "B": np.full((k, 16), weight, np.int8)})[0]
    return int(got[0, 0]) != 255 * weight * k


def main(args: argparse.Namespace) -> int:
    result = {
        "cpu": args.cpu,
        "u8s8_saturates_8bit_weights": u8s8_gemm_saturates(127),
        "u8s8_saturates_7bit_weights": u8s8_gemm_saturates(64),
    }
    print(json.dumps(result), flush=True)
    result["accuracy"] = {}
    for folder in sorted((args.work / "out").glob("acc-*")):
        inputs = np.load(folder / "test_inputs.npy")
        labels = np.load(folder / "test_labels.npy")
        fp32_top1 = np.load(folder / "fp32_top1.npy")
        rows = {}
        for path in sorted(folder.glob("*.onnx")):
            session = OnnxClassifier(path, threads=1)
            top1 = np.concatenate([session.logits(chunk).argmax(1) for chunk in np.array_split(inputs, max(1, len(inputs) // 64))])
            rows[path.stem] = {"accuracy": float((top1 == labels).mean()), "agreement_with_fp32": float((top1 == fp32_top1).mean())}
            print(folder.name, path.stem, rows[path.stem], flush=True)
        result["accuracy"][folder.name.removeprefix("acc-")] = rows
    (args.work / "out" / f"emulated-{args.cpu}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cpu", required=True, help="the QEMU CPU model it runs under (a label here)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
