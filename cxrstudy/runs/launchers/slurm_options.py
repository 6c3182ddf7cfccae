"""What a Slurm job asks for (:class:`SlurmOptions`): defaults, a TOML or YAML config file
(``slurm_config``) and ``slurm_*`` parameters, checked before any work."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from cxrstudy.errors import UsageError

_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|infinite|unlimited)$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


@dataclass
class SlurmOptions:
    """Everything a job asks Slurm for. Blank or None: Slurm's (or the cluster's) default."""

    partition: str = ""
    gpus: int = 0  # GPUs per job (one job trains one cell): --gres=gpu:N
    cpus: int = 4  # --cpus-per-task
    mem: str = ""  # --mem, e.g. 32G
    time: str = ""  # --time, e.g. 12:00:00 or 1-00:00:00
    extra: list = field(default_factory=list)  # extra #SBATCH lines, e.g. --account=lab
    max_retries: int = 2  # resubmissions of a failed cell before main gives up on it
    max_parallel: int = 0  # array throttle (%N); 0: no limit
    setup: list = field(default_factory=list)  # shell lines run before the job (module load ...)
    python: str = ""  # the Python on the compute nodes (default: this one; a shared venv)
    log_dir: str = ""  # where job scripts and logs go (default: <cache_dir>/logs/slurm)
    poll_seconds: float = 30.0  # how often squeue is asked
    array_max: int = 1000  # largest array submitted at once (Slurm's MaxArraySize is 1001 by default)

    def validate(self) -> "SlurmOptions":
        if self.time and not _TIME.match(self.time):
            raise UsageError(f"slurm time={self.time!r} is not a Slurm time limit; expected e.g. 90, 12:00:00 "
                             "or 1-00:00:00")
        if self.mem and not _MEM.match(self.mem):
            raise UsageError(f"slurm mem={self.mem!r} is not a Slurm memory size; expected e.g. 32G or 16000M")
        for name, lo, hi in (("gpus", 0, 64), ("cpus", 1, 1024), ("max_retries", 0, 100), ("max_parallel", 0, 100000),
                             ("array_max", 1, 1000000)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise UsageError(f"slurm {name}={v!r} is out of range; expected an integer {lo}..{hi}")
        if not (isinstance(self.poll_seconds, (int, float)) and 0.1 <= self.poll_seconds <= 3600):
            raise UsageError(f"slurm poll_seconds={self.poll_seconds!r} is out of range; expected 0.1..3600")
        if self.partition and not re.match(r"^[\w.,-]+$", self.partition):
            raise UsageError(f"slurm partition={self.partition!r} is not a partition name")
        for line in self.extra:
            if "\n" in line:
                raise UsageError(f"slurm extra line {line!r} contains a line break")
        return self


FIELDS = {f.name: f for f in dataclasses.fields(SlurmOptions)}
_INT_FIELDS = ("gpus", "cpus", "max_retries", "max_parallel", "array_max")


def _lines(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in re.split(r"[;\n]", value) if p.strip()]
    if isinstance(value, (list, tuple)):
        return [str(p).strip() for p in value if str(p).strip()]
    raise UsageError(f"expected a list of lines, got {value!r}")


def _coerce(name: str, value, where: str):
    if name in ("extra", "setup"):
        return _lines(value)
    if name in _INT_FIELDS:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip())
        except ValueError:
            raise UsageError(f"{where}: {name}={value!r} is not an integer") from None
    if name == "poll_seconds":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {name}={value!r} is not a number") from None
    return str(value).strip()


def load_config(path: str | Path) -> dict:
    """Read a Slurm config file: TOML (``.toml``) or YAML (``.yaml``/``.yml``), keys at the top
    level or under a ``[slurm]`` table. Unknown keys are an error (a typo must not be ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"slurm_config={str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            import tomllib

            data = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 -- any parse error is the user's file
        raise UsageError(f"slurm_config {path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"slurm_config {path}: expected a table of settings")
    if isinstance(data.get("slurm"), dict):
        data = data["slurm"]
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UsageError(f"slurm_config {path}: unknown setting(s) {', '.join(unknown)}; expected: {', '.join(FIELDS)}")
    return {k: _coerce(k, v, f"slurm_config {path}") for k, v in data.items()}


def options_from_params(raw: dict) -> SlurmOptions:
    """Defaults < the config file (``slurm_config``) < non-empty ``slurm_*`` parameters."""
    values: dict = {}
    if str(raw.get("slurm_config", "")).strip():
        values.update(load_config(raw["slurm_config"].strip()))
    for name in ("partition", "gpus", "cpus", "mem", "time", "extra", "max_retries", "max_parallel"):
        v = str(raw.get(f"slurm_{name}", "")).strip()
        if v:
            values[name] = _coerce(name, v, f"parameter slurm_{name}")
    return SlurmOptions(**values).validate()
