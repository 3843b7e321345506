"""ONNX -> TensorFlow SavedModel converters, registered by name (one exporter per target)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from faces.registry import Registry

CONVERTERS = Registry("ONNX->TensorFlow converter")

# onnx2tf checks its conversion on a sample batch that it otherwise downloads at run time.
_ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def _tf_safe_names(src: Path, dst: Path) -> Path:
    """``src`` with node names TF accepts: onnx2tf names the variables of grouped convs after
    their node, and TF refuses a leading '/' (``/grouped/conv/Conv/kernel``)."""
    import onnx

    model = onnx.load(str(src))
    if not any(n.name.startswith("/") for n in model.graph.node):
        return src
    for node in model.graph.node:
        node.name = node.name.lstrip("/")
    onnx.save(model, str(dst))
    return dst


@CONVERTERS.register("onnx2tf")
def onnx2tf_convert(
    onnx_path: str | os.PathLike,
    saved_model_dir: str | os.PathLike,
    binary_convs: list[str] | None = None,
    **options: object,
) -> Path:
    """Convert with onnx2tf (NHWC graph, BatchNorm folded, no layout transposes).

    ``options`` go to ``onnx2tf.convert`` (e.g. ``output_signaturedefs=True``);
    ``binary_convs`` (the binary Conv nodes) is not needed: onnx2tf's graph fuses as it is.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnx2tf

    onnx_path = Path(onnx_path).resolve()
    saved_model_dir = Path(saved_model_dir).resolve()
    if saved_model_dir.exists():
        shutil.rmtree(saved_model_dir)
    with tempfile.TemporaryDirectory(prefix="facekd-onnx2tf-") as work:
        onnx_path = _tf_safe_names(onnx_path, Path(work) / onnx_path.name)
        sample = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
        np.save(Path(work) / _ONNX2TF_SAMPLE, sample)
        log = io.StringIO()
        with contextlib.chdir(work), contextlib.redirect_stdout(log):
            try:
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path),
                    output_folder_path=str(saved_model_dir),
                    non_verbose=True,
                    **options,
                )
            except BaseException as exc:  # onnx2tf calls sys.exit on failure
                raise RuntimeError(
                    f"onnx2tf failed on {onnx_path}:\n{log.getvalue()[-4000:]}"
                ) from exc
    if not (saved_model_dir / "saved_model.pb").exists():
        raise RuntimeError(f"onnx2tf wrote no SavedModel for {onnx_path} into {saved_model_dir}")
    return saved_model_dir


@CONVERTERS.register("onnx-tf")
def onnx_tf_convert(
    onnx_path: str | os.PathLike,
    saved_model_dir: str | os.PathLike,
    binary_convs: list[str] | None = None,
    **options: object,
) -> Path:
    """Convert with onnx-tf 1.10 (NCHW graph) after the passes of :mod:`export.onnx_tf`.

    Each binarizer is moved inside the layout transposes so that LCE still sees
    ``Select -> Conv2D``; onnx2tf-only ``options`` are ignored.
    """
    from export.onnx_tf import convert_with_onnx_tf

    return convert_with_onnx_tf(onnx_path, saved_model_dir, binary_convs)
