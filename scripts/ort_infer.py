"""Run an ONNX model with ONNX Runtime, as a device would: NumPy and onnxruntime only, no PyTorch (chapter 10).

    python scripts/ort_infer.py MODEL.onnx INPUTS.npz OUTPUTS.npz [--quantize INT8.onnx] [--threads 2] [--repeat 20]

INPUTS.npz holds groups of arrays named ``<group>__<input name>`` (e.g. ``b0__input_ids``, ``b0__attention_mask``).
Each group is run once and its first output is written to OUTPUTS.npz under ``<group>``; groups whose name starts
with ``time`` are instead timed (median milliseconds over ``--repeat`` runs) and not written. ``--quantize`` first
writes an int8 copy (``onnxruntime.quantization.quantize_dynamic``, int8 weights, MatMul/Gemm) and runs that.
Prints one JSON line: the timings, the model's size in KB, and whether torch was imported (it must not be).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("outputs")
    ap.add_argument("--quantize", default=None, help="write an int8 copy here and run it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    model = a.model
    if a.quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(model, a.quantize, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        model = a.quantize
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    data = np.load(a.inputs)
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        group, _, name = key.partition("__")
        if name not in names:
            sys.exit(f"{a.inputs}: array {key!r} is not an input of {model} (inputs: {sorted(names)})")
        groups.setdefault(group, {})[name] = data[key]
    out, ms, t0 = {}, {}, time.perf_counter()
    for group, feed in groups.items():
        if group.startswith("time"):
            for _ in range(2):
                sess.run(None, feed)
            times = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t)
            ms[group] = 1000 * statistics.median(times)
        else:
            out[group] = sess.run(None, feed)[0]
    np.savez(a.outputs, **out)
    print(json.dumps({"ms": ms, "run_s": time.perf_counter() - t0, "model_kb": os.path.getsize(model) / 1024,
                      "onnxruntime": ort.__version__, "torch_imported": "torch" in sys.modules}))


if __name__ == "__main__":
    main()
