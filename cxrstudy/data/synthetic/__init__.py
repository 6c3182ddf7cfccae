"""Synthetic hospitals: the embedded default data, so every entry point runs on a fresh machine.

Four hospitals named mimic, cxp, nih and pad. Their label vectors are drawn from each
hospital's real label table (packaged as per-pattern counts, see :mod:`.patterns`), and their
images are rendered procedurally (:mod:`.render`) as chest-radiograph-like pictures whose
disease signs are plausible but not trivially separable, plus a per-hospital acquisition
signature, independent of the label, whose strength is ``shortcut_strength``.

Every table made here is synthetic: its paths start with ``synthetic://``, its ``attrs``
carry ``synthetic=True`` and its source has ``kind == "synthetic"``.
"""

from cxrstudy.data.synthetic.config import SyntheticConfig
from cxrstudy.data.synthetic.patterns import load_patterns
from cxrstudy.data.synthetic.render import RENDERER_VERSION, render
from cxrstudy.data.synthetic.source import SyntheticSource, sample_table

__all__ = ["SyntheticConfig", "SyntheticSource", "render", "RENDERER_VERSION", "load_patterns", "sample_table"]
