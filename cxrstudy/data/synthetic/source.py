"""The synthetic hospitals as a :class:`cxrstudy.data.sources.base.Source`."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from cxrstudy.data.schema import finalize
from cxrstudy.data.sources.base import Source
from cxrstudy.data.synthetic.config import SyntheticConfig
from cxrstudy.data.synthetic.patterns import BASE_LABELS, load_patterns, patterns_digest
from cxrstudy.data.synthetic.render import RENDERER_VERSION, render
from cxrstudy.errors import DataError, UsageError
from cxrstudy.hospitals import HOSPITALS, canonical_hospital
from cxrstudy.labels import DISEASES, add_any

#: P(1, 2, 3, 4 frontal images) per patient: the real tables' images-per-subject
#: distribution with 4+ pooled (cxp, nih, pad from the shipped metadata; mimic, not shipped,
#: like nih: ~3.7 images per subject in MIMIC-CXR).
IMAGES_PER_PATIENT = {
    "mimic": (0.45, 0.17, 0.10, 0.28),
    "cxp": (0.508, 0.178, 0.094, 0.220),
    "nih": (0.568, 0.134, 0.068, 0.230),
    "pad": (0.712, 0.173, 0.060, 0.055),
}
#: Share of AP (vs PA) views, roughly as in the real tables. The view is recorded only: it
#: does not change the picture (so it cannot leak the hospital at shortcut_strength=0).
AP_FRACTION = {"mimic": 0.6, "cxp": 0.85, "nih": 0.40, "pad": 0.16}
#: Probability that a follow-up image repeats the patient's previous label pattern (else it
#: is drawn afresh among the patterns of the same sex and age bin); marginals are unchanged.
PERSISTENCE = 0.5

PATH_PREFIX = "synthetic://"
_TAG_TABLE = 0x7AB1E


def synthetic_path(env: str, row: int) -> str:
    return f"{PATH_PREFIX}{env}/{int(row)}"


def sample_table(env: str, config: SyntheticConfig, patterns: pd.DataFrame | None = None):
    """The harmonised table of synthetic hospital ``env`` and its per-row (patient, image) numbers.

    Label patterns are drawn with probability proportional to their counts, so prevalences
    and co-occurrences follow the hospital's real (or, for mimic, raked) label table.
    """
    env = canonical_hospital(env)
    pats = load_patterns() if patterns is None else patterns
    pats = pats.loc[pats["env"] == env].reset_index(drop=True)
    if pats.empty:
        raise DataError(f"synthetic: no label patterns for hospital {env!r}")
    w = pats["count"].to_numpy(float)
    probs = w / w.sum()
    rng = np.random.default_rng([_TAG_TABLE, config.seed, HOSPITALS.index(env)])
    n = config.n_patients

    k = rng.choice(4, size=n, p=np.asarray(IMAGES_PER_PATIENT[env]) / np.sum(IMAGES_PER_PATIENT[env])) + 1
    first = rng.choice(len(pats), size=n, p=probs)
    total = int(k.sum())
    patient = np.repeat(np.arange(n), k)
    starts = np.cumsum(k) - k
    image_j = np.arange(total) - np.repeat(starts, k)
    persist = rng.random(total) < PERSISTENCE
    fresh_u = rng.random(total)
    ap = rng.random(total) < AP_FRACTION[env]

    # follow-ups: same sex and age bin as the patient's first image
    group_key = pats["sex"] + "|" + pats["age_bin"]
    group_codes, group_names = pd.factorize(group_key)
    members = [np.nonzero(group_codes == g)[0] for g in range(len(group_names))]
    cum = [np.cumsum(probs[m]) for m in members]

    idx = np.empty(total, np.int64)
    idx[starts] = first
    for j in range(1, 4):
        rows = np.nonzero(image_j == j)[0]
        if rows.size == 0:
            continue
        prev = idx[rows - 1]
        new = prev.copy()
        fresh = ~persist[rows]
        g_of = group_codes[idx[starts[patient[rows]]]]
        for g in np.unique(g_of[fresh]):
            sel = fresh & (g_of == g)
            u = fresh_u[rows[sel]] * cum[g][-1]
            pick = np.searchsorted(cum[g], u, side="right").clip(0, len(members[g]) - 1)
            new[sel] = members[g][pick]
        idx[rows] = new

    chosen = pats.iloc[idx].reset_index(drop=True)
    width = max(6, len(str(n - 1)))
    subj = np.char.add(f"{env}-", np.char.zfill(patient.astype(str), width))
    table = pd.DataFrame(
        {
            "env": env,
            "subject_id": subj,
            "study_id": np.char.add(np.char.add(subj, "-s"), (image_j + 1).astype(str)),
            "path": [synthetic_path(env, i) for i in range(total)],
            "view": np.where(ap, "AP", "PA"),
            "sex": chosen["sex"].to_numpy(),
            "age_bin": chosen["age_bin"].to_numpy(),
        }
    )
    for c in BASE_LABELS:
        table[c] = chosen[c].to_numpy(np.uint8)
    table = finalize(add_any(table))
    table.attrs["synthetic"] = True
    table.attrs["synthetic_config"] = config.to_dict()
    return table, patient, image_j


class SyntheticSource(Source):
    """A procedurally rendered hospital: sampled label table, images drawn on demand.

    Paths are ``synthetic://<env>/<row>``; ``read_image`` renders row ``row`` of
    :meth:`table` deterministically (same config, path and size give the same bytes in any
    process and order).
    """

    kind = "synthetic"
    has_images = True

    def __init__(self, env: str, config: SyntheticConfig | None = None) -> None:
        super().__init__()
        self.env = canonical_hospital(env)
        if config is None:
            config = SyntheticConfig()
        if not isinstance(config, SyntheticConfig):
            raise UsageError(f"synthetic source needs a SyntheticConfig, got {type(config).__name__}")
        self.config = config
        self._state = None
        self.notes.append(
            f"{self.env} (synthetic): procedurally rendered images; labels drawn from the "
            f"{'raked published-prevalence' if self.env == 'mimic' else 'real shipped'} label patterns"
        )

    # -- table -----------------------------------------------------------------------
    def _ensure(self):
        if self._state is None:
            table, patient, image_j = sample_table(self.env, self.config)
            dis = table[list(DISEASES)].to_numpy(np.uint8)
            self._state = (table, patient, image_j, dis, table["sex"].to_numpy())
        return self._state

    def table(self) -> pd.DataFrame:
        table = self._ensure()[0]
        out = table.copy()
        out.attrs = dict(table.attrs)
        return out

    def expected_images(self) -> int:
        """The table's length once drawn; before that the patient count times the hospital's mean
        images per patient (drawing the table of millions of patients takes minutes)."""
        if self._state is not None:
            return len(self._state[0])
        p = np.asarray(IMAGES_PER_PATIENT[self.env], float)
        return round(self.config.n_patients * float(np.dot(np.arange(1, len(p) + 1), p / p.sum())))

    # -- images ----------------------------------------------------------------------
    def row_of(self, path: str) -> int:
        prefix = f"{PATH_PREFIX}{self.env}/"
        p = str(path)
        if not p.startswith(prefix) or not p[len(prefix):].isdigit():
            raise DataError(f"{path!r} is not a synthetic path of hospital {self.env} (expected {prefix}<row>)")
        row = int(p[len(prefix):])
        n = len(self._ensure()[0])
        if row >= n:
            raise DataError(f"{path!r}: row {row} out of range (the {self.env} synthetic table has {n} rows)")
        return row

    def render_row(self, row: int, size: int) -> np.ndarray:
        table, patient, image_j, dis, sex = self._ensure()
        seed, e = self.config.seed, HOSPITALS.index(self.env)
        return render(
            dis[row],
            self.env,
            (seed, e, int(patient[row]), int(image_j[row])),
            size,
            patient_seed=(seed, e, int(patient[row])),
            shortcut_strength=self.config.shortcut_strength,
            sign_strength=self.config.sign_strength,
            sex=str(sex[row]),
        )

    def read_image(self, path: str, size: int) -> np.ndarray:
        return self.render_row(self.row_of(path), int(size))

    # -- identity --------------------------------------------------------------------
    def fingerprint(self) -> str:
        payload = {
            "renderer": RENDERER_VERSION,
            "config": self.config.to_dict(),
            "patterns": patterns_digest(),
            "env": self.env,
        }
        return "synthetic-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        c = self.config
        return (f"{self.env} (synthetic: {c.n_patients} patients, shortcut_strength={c.shortcut_strength:g}, "
                f"seed={c.seed})")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_state"] = None
        return state

