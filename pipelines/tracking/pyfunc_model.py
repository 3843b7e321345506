"""The MLflow pyfunc flavour of a released student: aligned faces in, embeddings out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from pipelines.tracking.bundle import BundleError, images_to_input, sha256_bytes

CODE_FILE = Path(__file__).with_name("released_model.py")  # MLflow's models-from-code file


def model_config(sha256: str, threads: int = 1) -> dict[str, Any]:
    """The ``model_config`` a released model is logged with: the flatbuffer's sha256, threads."""
    return {"sha256": sha256, "threads": threads}


class LceFaceEmbedder(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: aligned uint8 RGB faces (N, 112, 112, 3) -> raw embeddings (N, D).

    Logged from code (:data:`CODE_FILE`) with :func:`model_config`. Runs the released LCE
    ``.tflite`` in LCE's interpreter (indirect BGEMM kernels); refuses a flatbuffer whose
    sha256 differs from the released one.
    """

    def __init__(self) -> None:
        self._runner = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from export.runtime import TFLiteRunner

        config = context.model_config or {}
        if "sha256" not in config:
            raise BundleError("the released model's model_config names no sha256")
        path = Path(context.artifacts["lce_tflite"])
        data = path.read_bytes()
        if sha256_bytes(data) != config["sha256"]:
            raise BundleError(f"{path} does not match the released model's sha256")
        self._runner = TFLiteRunner(data, threads=int(config.get("threads", 1)), binary=True)

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
