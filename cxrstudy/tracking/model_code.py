"""The models-from-code file of every logged cxrstudy model: MLflow stores a copy of this file with
the model and runs it when ``mlflow.pyfunc.load_model`` loads one. It only imports the model class
from the installed cxrstudy package, so the code that runs is the package's, and the model's own
artifacts are a state dict and a JSON config (see cxrstudy/tracking/pyfunc_model.py)."""

from mlflow.models import set_model

from cxrstudy.tracking.pyfunc_model import ClassifierModel

set_model(ClassifierModel())
