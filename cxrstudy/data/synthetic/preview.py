"""A contact sheet of synthetic images (hospitals x examples), for eyeballing the renderer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrstudy.data.synthetic.config import SyntheticConfig
from cxrstudy.data.synthetic.source import SyntheticSource
from cxrstudy.hospitals import HOSPITALS
from cxrstudy.labels import DISEASES

# one example per column: the first row with (mostly) this finding
_WANTED = (None, "Cardiomegaly", "Effusion", "Pneumothorax", "Consolidation", "Edema", "Atelectasis", "Pneumonia")


def pick_rows(table, per_env: int) -> list[int]:
    """Deterministic example rows: a normal image, then one per finding in :data:`_WANTED`."""
    dis = table[list(DISEASES)].to_numpy()
    n_pos = dis.sum(axis=1)
    rows: list[int] = []
    for want in _WANTED:
        if len(rows) == per_env:
            break
        if want is None:
            cand = np.nonzero(table["No Finding"].to_numpy() == 1)[0]
        else:
            col = dis[:, DISEASES.index(want)] == 1
            cand = np.nonzero(col & (n_pos == 1))[0]
            if cand.size == 0:
                cand = np.nonzero(col)[0]
        cand = [int(c) for c in cand if int(c) not in rows]
        if cand:
            rows.append(cand[0])
    i = 0
    while len(rows) < per_env and i < len(table):
        if i not in rows:
            rows.append(i)
        i += 1
    return rows


def contact_sheet(path, config: SyntheticConfig | None = None, *, per_env: int = 6, size: int = 128) -> Path:
    """Save a (4 hospitals x ``per_env``) PNG with each image's positive labels as its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = config or SyntheticConfig()
    fig, axes = plt.subplots(len(HOSPITALS), per_env, figsize=(2.1 * per_env, 2.35 * len(HOSPITALS)), squeeze=False)
    for i, env in enumerate(HOSPITALS):
        src = SyntheticSource(env, config)
        table = src.table()
        for j, row in enumerate(pick_rows(table, per_env)):
            ax = axes[i, j]
            ax.imshow(src.render_row(row, size), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            pos = [d for d in DISEASES if table.at[row, d]] or (["No Finding"] if table.at[row, "No Finding"] else ["(no label)"])
            ax.set_title(f"{env} #{row}\n" + ", ".join(pos), fontsize=7)
            ax.axis("off")
    fig.suptitle(
        f"SYNTHETIC hospitals (shortcut_strength={config.shortcut_strength:g}, "
        f"sign_strength={config.sign_strength:g}, seed={config.seed}, {size}px)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
