"""torch's own int8 on x86, for comparison with ONNX Runtime's: FX graph-mode
post-training static quantization with the x86 backend (fbgemm kernels, oneDNN where
faster), calibrated on the same sample.

It runs without a compiler (PT2E with X86InductorQuantizer needs torch.compile, hence
gcc, at serve time; the image has none). torch.ao.quantization is deprecated in favour of
torchao but still ships in torch 2.10. The x86 qconfig quantizes activations to 7 bits
(reduce_range) so the AVX2 kernels cannot saturate.
"""

from __future__ import annotations

import warnings

import torch


def quantize_fx_x86(module: torch.nn.Module, calibration: torch.Tensor, batch: int = 8) -> torch.nn.Module:
    """An int8 copy of eval-mode `module`, calibrated on `calibration` (float32 NCHW)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notices of torch.ao.quantization and its observers
        prepared = prepare_fx(module.eval(), get_default_qconfig_mapping("x86"), (calibration[:1],))
        with torch.inference_mode():
            for chunk in calibration.split(batch):
                prepared(chunk)
        return convert_fx(prepared).eval()
