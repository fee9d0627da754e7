"""The whole pipeline as one ONNX graph: raw columns (or uint8 images) in, probabilities and labels out.

``whole_graph(model, features)`` wraps the model's graph as onnx_export writes it (input ``input``, output
``probabilities`` or ``prediction``; a quantized or pruned one alike) between float preprocessing and the label
lookup, so that any ONNX runtime gives trainfer's answers with no trainfer code. Only onnx.helper here, no torch.

Tables: float32 columns (runs of them as one block) are imputed with IsNaN/Where; float64 columns (dates as epoch
seconds, and columns too wide for float32) likewise in float64, then cast; categories go through an ai.onnx.ml
LabelEncoder (string -> slot; pandas' missing markers and "" -> the imputed category, anything unseen -> the
unknown slot) and Equal against the slot numbers (one-hot). Scaling is float Mul/Add in float64 only where the
bundle did it in numpy (see exporting.graph_standardizes); elsewhere it is folded into the model's first layer.
Images: the resize is Pillow's BILINEAR reproduced exactly (its weights, its 22-bit fixed point and rounding, and
its choice of which pass comes first) as float64 MatMuls; then the per-channel scaling, in NCHW.

Internal names carry the ``trainfer/`` prefix (the model's own: ``trainfer/model/``), so no column name collides
with them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trainfer.features.raw import raw_inputs
from trainfer.features.tabular import _MISSING_TEXT

OPSET = 18
OPSET_ML = 3
PRE = "trainfer/pre/"
POST = "trainfer/post/"
MODEL_PREFIX = "trainfer/model/"
RAW_INPUTS_KEY = "trainfer.raw_inputs"  # metadata_props: the manifest's input.raw_inputs, as JSON
_PIL_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images (32 - 8 - 2)
_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "string": TensorProto.STRING,
           "uint8": TensorProto.UINT8}


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.ml = False
        self._n = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"{PRE}{what}_{self._n}"

    def const(self, value: Any, what: str, dtype: Any = None) -> str:
        name = self.name(what)
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype.kind in "OU":
            self.inits.append(helper.make_tensor(name, TensorProto.STRING, arr.shape,
                                                 [str(v).encode() for v in arr.reshape(-1)]))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, domain: str = "", **attrs: Any) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out


def whole_graph(model: onnx.ModelProto, features: Any, standardized_in_graph: bool) -> onnx.ModelProto:
    """``model`` (input "input", output "probabilities"/"prediction") with preprocessing and the label lookup
    around it. ``standardized_in_graph``: the model takes encode()'s rows (its first layer scales them); else it
    takes transform()'s, and the scaling is done here (float64 Mul/Add) before it."""
    inner = onnx.compose.add_prefix(model, MODEL_PREFIX)
    model_in = MODEL_PREFIX + "input"
    # The model's last node writes the graph output itself: an Identity to rename it is a node onnxruntime keeps
    # (it never removes one that produces a graph output), ~2 us of the digits MLP's ~28 us at batch 1.
    model_out = "probabilities" if features.target.task == "classification" else "prediction"
    _rename(inner.graph, inner.graph.output[0].name, model_out)
    b = _Builder()
    inputs = raw_inputs(features)
    if features.kind == "image":
        _image(b, features.inputs, inputs[0]["name"], model_in)
    else:
        _table(b, features.inputs, inputs, model_in, standardized_in_graph)
    outputs = _outputs(b, features, model_out)
    graph = helper.make_graph(
        b.nodes + list(inner.graph.node) + outputs[1], "trainfer_whole",
        [helper.make_tensor_value_info(i["name"], _DTYPES[i["dtype"]], i["shape"]) for i in inputs],
        outputs[0], initializer=b.inits + list(inner.graph.initializer))
    graph.value_info.extend(inner.graph.value_info)
    # Only the domains the graph uses: onnxruntime's quantization pre-processing declares a dozen (ai.onnx.ml 5,
    # com.microsoft, ...) that would claim more than a runtime needs to support.
    used = {n.domain for n in inner.graph.node} | {f.domain for f in inner.functions}
    used |= {n.domain for f in inner.functions for n in f.node}
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in inner.opset_import}
    opsets = {d: v for d, v in opsets.items() if d in used}
    opsets[""] = max(opsets.get("", OPSET), OPSET)
    if b.ml:
        opsets["ai.onnx.ml"] = max(opsets.get("ai.onnx.ml", OPSET_ML), OPSET_ML)
    whole = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="trainfer", ir_version=inner.ir_version)
    whole.functions.extend(inner.functions)
    # Which column each input is (a column named like an output is fed as "input:<column>"): readable with no
    # trainfer code, e.g. onnxruntime's session.get_modelmeta().custom_metadata_map.
    helper.set_model_props(whole, {RAW_INPUTS_KEY: json.dumps(inputs, ensure_ascii=False)})
    onnx.checker.check_model(whole)
    return whole


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Tensor ``old`` of ``graph`` (its nodes' inputs and outputs, value_info) is called ``new``."""
    for n in graph.node:
        n.input[:] = [new if x == old else x for x in n.input]
        n.output[:] = [new if x == old else x for x in n.output]
    for vi in graph.value_info:
        if vi.name == old:
            vi.name = new


def opsets_of(model: onnx.ModelProto) -> tuple[int, int | None]:
    """(ai.onnx opset, ai.onnx.ml opset or None): what the manifest records."""
    d = {o.domain: o.version for o in model.opset_import}
    return int(d.get("", d.get("ai.onnx", OPSET))), (int(d["ai.onnx.ml"]) if "ai.onnx.ml" in d else None)


# ---- tables -----------------------------------------------------------------------------------------

def _table(b: _Builder, tab: Any, inputs: list[dict[str, Any]], model_in: str, standardized: bool) -> None:
    pieces: list[str] = []
    run: list[tuple[dict[str, Any], str]] = []  # consecutive float32 columns: imputed as one block

    def flush() -> None:
        if run:
            x = b.op("Concat", [n for _, n in run], axis=1) if len(run) > 1 else run[0][1]
            pieces.append(_numeric(b, x, [s for s, _ in run], np.float32, standardized))
            run.clear()

    for spec, inp in zip(tab.columns, inputs, strict=True):
        if inp["dtype"] == "float32":
            run.append((spec, inp["name"]))
            continue
        flush()
        if inp["dtype"] == "float64":
            pieces.append(_numeric(b, inp["name"], [spec], np.float64, standardized))
        else:
            pieces.append(_one_hot(b, inp["name"], spec))
    flush()
    if len(pieces) == 1:
        b.op("Identity", pieces, model_in)
    else:
        b.op("Concat", pieces, model_in, axis=1)


def _numeric(b: _Builder, x: str, specs: list[dict[str, Any]], dtype: Any, standardized: bool) -> str:
    """Impute with the training median; scale in float64 when the model expects standardized input (numpy's
    transform computed x * (1 / std) + (-mean / std) in float64, then rounded to float32)."""
    fill = np.asarray([[s["fill"] for s in specs]], dtype=np.float64)
    wide = dtype == np.float64 or not standardized
    if wide and dtype == np.float32:
        x = b.op("Cast", [x], to=TensorProto.DOUBLE)
    x = b.op("Where", [b.op("IsNaN", [x]), b.const(fill.astype(np.float64 if wide else np.float32), "fill"), x])
    if not standardized:
        scale = np.asarray([[1.0 / s["std"] for s in specs]], dtype=np.float64)
        shift = np.asarray([[-s["mean"] / s["std"] for s in specs]], dtype=np.float64)
        x = b.op("Add", [b.op("Mul", [x, b.const(scale, "scale")]), b.const(shift, "shift")])
    return b.op("Cast", [x], to=TensorProto.FLOAT) if wide else x


def _one_hot(b: _Builder, x: str, spec: dict[str, Any]) -> str:
    cats = list(spec["categories"])
    unknown = len(cats)
    index = {c: i for i, c in enumerate(cats)}
    fill = index.get(spec["fill"], unknown) if spec["fill"] is not None else unknown
    keys = cats + [m for m in sorted(_MISSING_TEXT) if m not in index]
    values = list(range(len(cats))) + [fill] * (len(keys) - len(cats))
    b.ml = True
    slot = b.op("LabelEncoder", [x], domain="ai.onnx.ml", keys_strings=keys, values_int64s=values,
                default_int64=unknown)
    hot = b.op("Equal", [slot, b.const(np.arange(unknown + 1, dtype=np.int64), "slots")])
    return b.op("Cast", [hot], to=TensorProto.FLOAT)


# ---- images -----------------------------------------------------------------------------------------

def _image(b: _Builder, img: Any, name: str, model_in: str) -> None:
    size = int(img.size)
    # NHWC uint8 -> NCHW float64 (exact), then Pillow's two passes, each rounded to 0..255 as Pillow does.
    x = b.op("Cast", [b.op("Transpose", [name], perm=[0, 3, 1, 2])], to=TensorProto.DOUBLE)
    shape = b.op("Shape", [x])
    width = b.op("Gather", [shape, b.const(3, "w_axis", np.int64)])
    height = b.op("Gather", [shape, b.const(2, "h_axis", np.int64)])
    w_h = b.op("Transpose", [_pil_weights(b, width, size)], perm=[1, 0])  # [width, size]
    w_v = _pil_weights(b, height, size)  # [size, height]
    hv = _fixed_round(b, b.op("MatMul", [w_v, _fixed_round(b, b.op("MatMul", [x, w_h]))]))
    vh = _fixed_round(b, b.op("MatMul", [_fixed_round(b, b.op("MatMul", [w_v, x])), w_h]))
    # Pillow 13 resizes vertically first when the height shrinks by more than twice what the width does
    # (python-pillow/Pillow#9549; measured here: exact on every size tried), else horizontally first. Each
    # pass rounds to uint8, so the order shows in the last bit: both are computed and the right one kept.
    size_f = b.const(float(size), "size", np.float64)
    dh = b.op("Sub", [b.op("Cast", [height], to=TensorProto.DOUBLE), size_f])
    dw = b.op("Sub", [b.op("Cast", [width], to=TensorProto.DOUBLE), size_f])
    vertical_first = b.op("And", [b.op("Greater", [dh, b.const(0.0, "zero", np.float64)]),
                                  b.op("Greater", [dh, b.op("Mul", [dw, b.const(2.0, "two", np.float64)])])])
    x = b.op("Where", [vertical_first, vh, hv])
    # (pixel / 255 - mean) / std as one float32 multiply-add, as ImageFeatures.transform does
    x = b.op("Cast", [x], to=TensorProto.FLOAT)
    x = b.op("Mul", [x, b.const(img._scale.reshape(1, 3, 1, 1), "scale")])
    b.op("Add", [x, b.const(img._shift.reshape(1, 3, 1, 1), "shift")], model_in)


def _pil_weights(b: _Builder, n_in: str, size: int) -> str:
    """[size, n_in] float64: Pillow's bilinear (triangle) resampling weights from ``n_in`` pixels to ``size``, in
    its fixed point (integers summing to about 2**22), computed as Pillow computes them (ImagingResample's
    precompute_coeffs and normalize_coeffs_8bpc)."""
    f = TensorProto.DOUBLE
    n = b.op("Cast", [n_in], to=f)
    scale = b.op("Div", [n, b.const(float(size), "size", np.float64)])  # in / out
    filterscale = b.op("Max", [scale, b.const(1.0, "one", np.float64)])
    ss = b.op("Div", [b.const(1.0, "one", np.float64), filterscale])
    support = filterscale  # the bilinear filter's support is 1.0
    half = b.const(0.5, "half", np.float64)
    center = b.op("Mul", [b.op("Add", [b.const(np.arange(size, dtype=np.float64).reshape(-1, 1), "out_px"), half]),
                          scale])  # [size, 1]
    lo = b.op("Max", [b.op("Floor", [b.op("Add", [b.op("Sub", [center, support]), half])]),
                      b.const(0.0, "zero", np.float64)])
    hi = b.op("Min", [b.op("Floor", [b.op("Add", [b.op("Add", [center, support]), half])]), n])
    j = b.op("Range", [b.const(0.0, "zero", np.float64), n, b.const(1.0, "one", np.float64)])  # [n_in]
    inside = b.op("And", [b.op("GreaterOrEqual", [j, lo]), b.op("Less", [j, hi])])  # [size, n_in]
    t = b.op("Abs", [b.op("Mul", [b.op("Add", [b.op("Sub", [j, center]), half]), ss])])
    w = b.op("Max", [b.op("Sub", [b.const(1.0, "one", np.float64), t]), b.const(0.0, "zero", np.float64)])
    w = b.op("Where", [inside, w, b.const(0.0, "zero", np.float64)])
    total = b.op("ReduceSum", [w, b.const([1], "axis", np.int64)], keepdims=1)
    w = b.op("Div", [w, total])
    return b.op("Floor", [b.op("Add", [b.op("Mul", [w, b.const(float(1 << _PIL_BITS), "fixed", np.float64)]),
                                       half])])


def _fixed_round(b: _Builder, acc: str) -> str:
    """Pillow's clip8((acc + 2**21) >> 22): exact in float64 (|acc| < 2**31)."""
    x = b.op("Floor", [b.op("Mul", [b.op("Add", [acc, b.const(float(1 << (_PIL_BITS - 1)), "round", np.float64)]),
                                    b.const(1.0 / (1 << _PIL_BITS), "unfixed", np.float64)])])
    return b.op("Clip", [x, b.const(0.0, "zero", np.float64), b.const(255.0, "max", np.float64)])


# ---- outputs ----------------------------------------------------------------------------------------

def _outputs(b: _Builder, features: Any, model_out: str) -> tuple[list[onnx.ValueInfoProto], list[onnx.NodeProto]]:
    nodes: list[onnx.NodeProto] = []

    def node(op_type: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op_type, inputs, [out], name=POST + out.replace(POST, ""), **attrs))
        return out

    t = features.target
    if t.task != "classification":  # model_out is "prediction" (see whole_graph)
        return [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1])], nodes
    labels = t.labels
    if any(isinstance(v, str) for v in labels):
        table, ltype = np.asarray([str(v) for v in labels], dtype=object), TensorProto.STRING
    elif all(isinstance(v, bool) for v in labels):
        table, ltype = np.asarray(labels, dtype=bool), TensorProto.BOOL
    else:
        table, ltype = np.asarray(labels, dtype=np.int64), TensorProto.INT64
    idx = node("ArgMax", [model_out], POST + "argmax", axis=1, keepdims=0)
    node("Gather", [b.const(table, "labels"), idx], "label", axis=0)
    return [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(labels)]),
            helper.make_tensor_value_info("label", ltype, ["batch"])], nodes


__all__ = ["MODEL_PREFIX", "OPSET", "OPSET_ML", "RAW_INPUTS_KEY", "opsets_of", "whole_graph"]
