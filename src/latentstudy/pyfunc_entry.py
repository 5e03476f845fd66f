"""The file MLflow runs to load a latentstudy model ("models from code", MLflow's advice over a
pickled object): the pyfunc class of latentstudy.mlflow_model, set as the model."""

from mlflow.models import set_model

from latentstudy.mlflow_model import LatentPyfunc

set_model(LatentPyfunc())
