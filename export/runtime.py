"""Run TFLite flatbuffers (LCE or float) for embeddings and latency."""

from __future__ import annotations

import statistics
import time

import numpy as np


class TFLiteRunner:
    """A flatbuffer in LCE's interpreter; batch 1 NHWC inside, NCHW batches outside.

    ``binary=True`` uses LCE's indirect BGEMM kernels (on x86 the default binary kernel is
    slower than float); float models run through XNNPACK.
    """

    def __init__(
        self, flatbuffer: bytes, threads: int = 1, binary: bool = True, indirect_bgemm: bool = True
    ) -> None:
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        self.interpreter = Interpreter(
            flatbuffer,
            num_threads=threads,
            use_indirect_bgemm=binary and indirect_bgemm,
            use_xnnpack=not binary,
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

    def latency(self, runs: int = 50, warmup: int = 10) -> dict[str, float]:
        """Median and p90 latency (ms) of single-image inference after warm-up, and FPS."""
        x = np.random.default_rng(0).standard_normal(self.shape).astype(np.float32)
        for _ in range(warmup):
            self.interpreter.predict(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.interpreter.predict(x)
            times.append((time.perf_counter() - t0) * 1000)
        p50 = statistics.median(times)
        p90 = float(np.percentile(times, 90))
        return {"latency_ms_p50": p50, "latency_ms_p90": p90, "fps": 1000.0 / p50, "runs": runs}
