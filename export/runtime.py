"""Run TFLite flatbuffers (LCE or float) for embeddings and latency."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


class TFLiteRunner:
    """A flatbuffer in LCE's interpreter; batch 1 NHWC inside, NCHW batches outside.

    ``binary=True`` uses LCE's indirect BGEMM kernels (on x86 the default binary kernel is
    slower than float) and, unless ``xnnpack=True``, TFLite's builtin kernels for the float
    ops: the reference arithmetic of embeddings and parity. Float models run through XNNPACK.
    """

    def __init__(
        self,
        flatbuffer: bytes,
        threads: int = 1,
        binary: bool = True,
        indirect_bgemm: bool = True,
        xnnpack: bool | None = None,
    ) -> None:
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        self.interpreter = Interpreter(
            flatbuffer,
            num_threads=threads,
            use_indirect_bgemm=binary and indirect_bgemm,
            use_xnnpack=(not binary) if xnnpack is None else xnnpack,
        )
        shape = self.interpreter.input_shapes[0]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ValueError(f"expected a (1, H, W, 3) input, the model has {shape}")
        self.shape = tuple(shape)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of a normalised float (N, 3, H, W) batch, one image at a time."""
        nhwc = np.ascontiguousarray(batch.transpose(0, 2, 3, 1), dtype=np.float32)
        out = [self.interpreter.predict(nhwc[i : i + 1]) for i in range(len(nhwc))]
        return np.concatenate(out).reshape(len(nhwc), -1)

    def times(self, runs: int = 50, warmup: int = 10) -> list[float]:
        """Wall times (ms) of ``runs`` single-image inferences after ``warmup`` ones."""
        x = np.random.default_rng(0).standard_normal(self.shape).astype(np.float32)
        for _ in range(warmup):
            self.interpreter.predict(x)
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.interpreter.predict(x)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def latency(self, runs: int = 50, warmup: int = 10) -> dict[str, float]:
        """Median and p90 latency (ms) of single-image inference after warm-up, and FPS."""
        return _summary(self.times(runs, warmup), [])


def _summary(times: list[float], per_instance: list[float]) -> dict[str, float]:
    p50 = statistics.median(times)
    out = {
        "latency_ms_p50": p50,
        "latency_ms_p90": float(np.percentile(times, 90)),
        "fps": 1000.0 / p50,
        "runs": float(len(times)),
    }
    if per_instance:
        out["latency_ms_p50_min_instance"] = min(per_instance)
        out["latency_ms_p50_max_instance"] = max(per_instance)
    return out


def measure_latency(
    flatbuffer: bytes,
    *,
    binary: bool,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 10,
    instances: int = 3,
    indirect_bgemm: bool = True,
    xnnpack: bool = True,
) -> dict[str, float]:
    """Latency pooled over several fresh interpreters of the same flatbuffer.

    ``xnnpack`` (default) lets XNNPACK run the float ops, also those of an LCE model (its stem,
    depthwise and head layers; LCE's ops stay on its own kernels), as a device runs it with
    ``lce_benchmark_model --use_xnnpack=true``; TFLite's builtin float kernels are up to 5x
    slower on the float layers of a binary model (a float grouped conv, onnx-tf's decomposed
    PReLU). ``xnnpack=False`` times those builtin kernels.

    On x86, one LCE interpreter instance can run 2x slower than another for the same model
    (seen here: 3.5 vs 6.5 ms, bimodal, stable within an instance), so a single instance is a
    coin toss; the pooled median and the per-instance range are reported instead.
    """
    pooled: list[float] = []
    medians: list[float] = []
    for _ in range(instances):
        runner = TFLiteRunner(
            flatbuffer, threads, binary=binary, indirect_bgemm=indirect_bgemm, xnnpack=xnnpack
        )
        t = runner.times(runs, warmup)
        pooled.extend(t)
        medians.append(statistics.median(t))
    return _summary(pooled, medians)


def measure_latencies(
    models: dict[str, tuple[bytes, dict[str, Any]]],
    *,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 10,
    instances: int = 3,
) -> dict[str, dict[str, float]]:
    """:func:`measure_latency` of several flatbuffers, taking turns: fresh interpreter ``i``
    of every model runs right after the others' ``i``-th, so that a slow spell of the machine
    (this VM has some lasting tens of seconds, for every runtime alike) weighs on all models
    and not on one. ``models``: name -> (flatbuffer, TFLiteRunner options such as
    ``{"binary": True}``; ``xnnpack`` defaults to True as in :func:`measure_latency`)."""
    pooled: dict[str, list[float]] = {name: [] for name in models}
    medians: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(instances):
        for name, (flatbuffer, options) in models.items():
            runner = TFLiteRunner(flatbuffer, threads, **{"xnnpack": True, **options})
            t = runner.times(runs, warmup)
            pooled[name].extend(t)
            medians[name].append(statistics.median(t))
    return {name: _summary(pooled[name], medians[name]) for name in models}


def onnxruntime_latency(
    path: str | os.PathLike, *, threads: int = 1, runs: int = 50, warmup: int = 10
) -> dict[str, float]:
    """Median and p90 latency (ms) of an ONNX model in ONNX Runtime (CPU), batch 1."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return _summary(times, [])


def litert_latency(
    flatbuffer: bytes,
    *,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 10,
    xnnpack: bool = False,
) -> dict[str, float]:
    """Latency of a (non-LCE) flatbuffer in ai-edge-litert's interpreter, batch 1.

    ``xnnpack=False`` uses the builtin optimised kernels without any default delegate: the
    reference point for what XNNPACK adds.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(
        model_content=flatbuffer, num_threads=threads, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(inp["shape"]).astype(inp["dtype"])
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return _summary(times, [])


def rss_bytes() -> int:
    """Resident set size of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux: ``VmHWM`` of /proc/self/status (reset by exec; ``ru_maxrss`` is not: a child
    started by a big parent reports the parent's size). Elsewhere ``ru_maxrss``.
    """
    import resource
    import sys

    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
