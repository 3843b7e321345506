"""MLflow's models-from-code file of a released student (``facekd release``).

MLflow copies this file into the logged model and runs it when the model is loaded, so the
registry holds code, not a pickled Python object (loading a pickle can run any code). The
released flatbuffer's sha256 and the thread count come from the model's ``model_config``.
"""

import mlflow

from pipelines.tracking.pyfunc_model import LceFaceEmbedder

mlflow.models.set_model(LceFaceEmbedder())
