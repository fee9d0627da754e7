"""int8 quantization with onnxruntime: dynamic (weights int8, activations at run time) and static
(QDQ, per-channel weights, activations calibrated on a sample of the train split)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from trainfer.exporting.onnx_export import INPUT_NAME

# Only the layers carrying weights. Softmax and the output scaling stay in float: quantizing probabilities
# would cost accuracy for nothing; so does the input standardization (Mul/Add, see exporting.inference_module),
# whose per-column scales span orders of magnitude that one int8 scale cannot hold.
_QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def _preprocess(src: Path, dst: Path) -> Path:
    """Shape inference and graph cleanup, which onnxruntime recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception:  # pre-processing is an optimization; quantizing the raw graph still works
        return src


def quantize_dynamic_int8(src: Path, dst: Path, work: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepped = _preprocess(src, work / "dynamic-pre.onnx")
    with _quiet():
        # Per output channel, as the static path: one scale per tensor lets the layer's largest weight set the
        # step for all, and small rows then round to a few levels (digits: 0.37 points lost, none per channel).
        quantize_dynamic(str(prepped), str(dst), op_types_to_quantize=_QUANTIZED_OPS, weight_type=QuantType.QInt8,
                         per_channel=True)


def quantize_static_int8(src: Path, dst: Path, work: Path, calibration: np.ndarray, method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # Equal-size batches: the percentile calibrator stacks them into one array.
            size = min(32, len(calibration))
            usable = len(calibration) // size * size
            self._batches = iter([{INPUT_NAME: calibration[i:i + size]} for i in range(0, usable, size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    prepped = _preprocess(src, work / f"static-{method}-pre.onnx")
    with _quiet():
        quantize_static(
            str(prepped), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=_QUANTIZED_OPS,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"CalibPercentile": 99.99} if method == "percentile" else None,
        )


@contextlib.contextmanager
def _quiet():  # the quantizer logs per-node chatter at WARNING
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
