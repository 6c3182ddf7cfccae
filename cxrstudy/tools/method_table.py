"""Write the table of training methods in docs/GUIDE.md from the registry.

Each registered method's ``name``, ``description`` and ``HPARAMS`` (default, search range) are the
single source of truth; ``python -m cxrstudy.tools.method_table`` rewrites the table, and a test
fails when the committed page is out of date.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrstudy.train.methods import get_method, method_names

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "GUIDE.md"
HEADER = "| method | what it does | hyperparameters (default, search range) |\n|---|---|---|\n"


def _num(v) -> str:
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{v:g}")  # 1e-05 -> 1e-5


def render() -> str:
    """The table: one row per registered method, in registration order."""
    rows = []
    for name in method_names():
        cls = get_method(name)
        hps = "; ".join(f"`{k}` {_num(hp.default)}, {_num(hp.low)}..{_num(hp.high)}" for k, hp in cls.HPARAMS.items())
        rows.append(f"| `{name}` | {cls.description} | {hps or 'none'} |\n")
    return HEADER + "".join(rows)


def current(text: str) -> str:
    """The table as the page has it (the header and the rows after it)."""
    start = text.index(HEADER)
    end = start + len(HEADER)
    while text.startswith("|", end):
        end = text.index("\n", end) + 1
    return text[start:end]


def main() -> None:
    text = PAGE.read_text()
    PAGE.write_text(text.replace(current(text), render()))


if __name__ == "__main__":
    main()
