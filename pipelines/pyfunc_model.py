"""The MLflow pyfunc flavour of a released student: aligned faces in, embeddings out."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

from pipelines.bundle import BundleError, images_to_input, sha256_bytes


class LceFaceEmbedder(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: aligned uint8 RGB faces (N, 112, 112, 3) -> raw embeddings (N, D).

    Runs the released LCE ``.tflite`` in LCE's interpreter (indirect BGEMM kernels); refuses a
    flatbuffer whose sha256 differs from the released one.
    """

    def __init__(self, sha256: str, threads: int = 1) -> None:
        self.sha256 = sha256
        self.threads = threads
        self._runner = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from export.runtime import TFLiteRunner

        path = Path(context.artifacts["lce_tflite"])
        data = path.read_bytes()
        if sha256_bytes(data) != self.sha256:
            raise BundleError(f"{path} does not match the released model's sha256")
        self._runner = TFLiteRunner(data, threads=self.threads, binary=True)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input,  # no type hint: MLflow would validate it as a list of instances
        params=None,
    ):
        assert self._runner is not None, "load_context was not called"
        if isinstance(model_input, dict):  # a named-tensor call: {"images": array}
            (model_input,) = model_input.values()
        return self._runner.embed(images_to_input(model_input)).astype(np.float32)
