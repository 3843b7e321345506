"""``python -m export._onnx_tf_worker IN.onnx OUT_DIR``: onnx-tf conversion under Keras 2.

onnx-tf imports tensorflow-addons, whose ``keras.src.engine`` import fails under Keras 3.
Run with ``TF_USE_LEGACY_KERAS=1`` (set by :func:`export.onnx_tf.run_onnx_tf` before TF is
imported), this process makes ``keras`` name the installed ``tf_keras`` package, then converts.
Nothing is patched on disk and the parent process keeps Keras 3.
"""

from __future__ import annotations

import importlib
import os
import sys


def _keras2() -> None:
    """Make ``import keras`` (and the submodules tensorflow-addons uses) resolve to tf_keras."""
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError("run with TF_USE_LEGACY_KERAS=1 (see export.onnx_tf.run_onnx_tf)")
    for suffix in ("", ".src", ".src.engine", ".src.engine.keras_tensor"):
        sys.modules["keras" + suffix] = importlib.import_module("tf_keras" + suffix)


def main(argv: list[str]) -> int:
    src, dst = argv
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    _keras2()
    import onnx
    from onnx_tf.backend import prepare

    prepare(onnx.load(src)).export_graph(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
