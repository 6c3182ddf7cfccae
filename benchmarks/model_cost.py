"""One model's cost: train one configuration with a preset through the training loop (no MLflow)
and print its steps, best step, CPU seconds (core-seconds: every thread of the process) and the
kept model's validation metrics, as one JSON line. Issue 21's before/after figures in the README
come from this script, run at the commit before the change and after it.

    .venv/bin/python benchmarks/model_cost.py ENVS LABEL BALANCE SEED [param=value ...]
    .venv/bin/python benchmarks/model_cost.py cxp,nih Effusion hospital_label 1 max_steps=1000
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.train.config import TRAIN_PARAMS, config_from_params  # noqa: E402
from cxrstudy.train.device import pick_device  # noqa: E402
from cxrstudy.train.loop import prepare_data, train_model  # noqa: E402


def main(argv: list[str]) -> None:
    envs, label, balance, seed = argv[:4]
    extra = dict(a.lstrip("-").split("=", 1) for a in argv[4:])
    raw = {**TRAIN_PARAMS, "envs": envs, "label": label, "balance": balance, "seed": seed, "preset": "cpu",
           "cache_dir": os.environ.get("CXRSTUDY_CACHE", str(Path.cwd() / ".cache" / "cxrstudy")), **extra}
    cfg = config_from_params(raw)
    data = prepare_data(cfg, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as d:
        out = train_model(cfg, data, device=pick_device("cpu"), checkpoint_dir=Path(d), progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    best = out.best_val()
    print(json.dumps({
        "config": f"{envs} {label} {balance} seed {seed}", "core_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
        "last_step": out.last_step, "best_step": out.best_step, "converged": out.converged(cfg.max_steps),
        "constant": out.constant, "val_macro_f1": round(out.best_score, 3), "val_auroc": round(best.get("auroc", float("nan")), 3),
        "val_wga": round(best.get("wga", float("nan")), 3), "n_val": len(data.val.frame),
        "seconds_by_phase": {k: round(v, 2) for k, v in getattr(out, "seconds", {}).items()}}))


if __name__ == "__main__":
    main(sys.argv[1:])
