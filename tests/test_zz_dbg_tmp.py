import os, sys
sys.path.insert(0, "/work/main/tests")
from test_analysis import *  # noqa
import mlflow.tracking.fluent as fl

def test_zz_probe(tstore, capsys):
    print("\nactive exp id global:", fl._active_experiment_id)
    e = mlflow.set_experiment("fresh")
    print("set ->", e.experiment_id, e.name, os.environ.get("MLFLOW_EXPERIMENT_ID"))
    print([(x.experiment_id, x.name) for x in mlflow.search_experiments()])
