"""The file MLflow's "models from code" logging stores and runs to rebuild the served model
(no pickled Python objects in the model directory)."""

from mlflow.models import set_model

from convlstm.pyfunc import ConvLSTMPyfunc

set_model(ConvLSTMPyfunc())
