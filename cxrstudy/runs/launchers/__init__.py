"""Launchers: where the study's training cells run.

- ``local`` (default): in this process, or ``workers`` parallel processes on this machine (one
  per visible GPU with ``workers=auto``), :mod:`cxrstudy.runs.launchers.local`;
- ``slurm``: one Slurm job-array task per unfinished cell, each ``mlflow run ... -e train``
  against a shared tracking server, :mod:`cxrstudy.runs.launchers.slurm` (its options
  :mod:`~cxrstudy.runs.launchers.slurm_options`, job script :mod:`~cxrstudy.runs.launchers.slurm_script`
  and Slurm commands :mod:`~cxrstudy.runs.launchers.slurm_commands`; what both launchers share
  :mod:`cxrstudy.runs.launchers.common`).

``main`` merges :data:`LAUNCHER_PARAMS` into its parameters and calls :func:`launcher_from_params`
before any work, so a bad value or a missing service is reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrstudy.errors import UsageError

#: main's launcher parameters (blank: the config file's value, else the default)
LAUNCHER_PARAMS = {
    "launcher": "local",
    "slurm_config": "",
    "slurm_partition": "",
    "slurm_gpus": "",
    "slurm_cpus": "",
    "slurm_mem": "",
    "slurm_time": "",
    "slurm_extra": "",
    "slurm_max_retries": "",
    "slurm_max_parallel": "",
}

LAUNCHERS = ("local", "slurm")


@dataclass
class Launcher:
    name: str = "local"
    slurm: object = None  # SlurmOptions for launcher=slurm

    def check(self, tracking_uri: str) -> None:
        """Fail before any work when this launcher cannot run here."""
        if self.name == "slurm":
            from cxrstudy.runs.launchers.slurm import check_tracking_uri
            from cxrstudy.runs.launchers.slurm_commands import check_slurm

            check_tracking_uri(tracking_uri)
            check_slurm()

    def run(self, cells, *, workers: int = 1, parent_run_id: str, experiment_id: str, tracking_uri: str,
            device: str = "auto", progress: bool = True) -> None:
        if self.name == "slurm":
            from cxrstudy.runs.launchers.slurm import run_slurm

            run_slurm(cells, self.slurm, parent_run_id=parent_run_id, experiment_id=experiment_id,
                      tracking_uri=tracking_uri, device=device, progress=progress)
        else:
            from cxrstudy.runs.launchers.local import run_local

            run_local(cells, workers=workers, parent_run_id=parent_run_id, device=device,
                      tracking_uri=tracking_uri, experiment_id=experiment_id, progress=progress)


def launcher_from_params(raw: dict) -> Launcher:
    name = str(raw.get("launcher", "local")).strip().lower() or "local"
    if name not in LAUNCHERS:
        raise UsageError(f"parameter launcher={raw.get('launcher')!r} is not allowed; expected one of: "
                         f"{', '.join(LAUNCHERS)}")
    if name == "slurm":
        from cxrstudy.runs.launchers.slurm_options import options_from_params

        return Launcher("slurm", options_from_params(raw))
    given = [k for k in LAUNCHER_PARAMS if k.startswith("slurm_") and str(raw.get(k, "")).strip()]
    if given:
        raise UsageError(f"parameter(s) {', '.join(given)} apply to launcher=slurm only; add -P launcher=slurm")
    return Launcher("local")
