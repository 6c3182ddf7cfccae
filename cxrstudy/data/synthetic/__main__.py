"""``python -m cxrstudy.data.synthetic``: rebuild the packaged label patterns, draw a contact sheet,
or time the renderer.

    python -m cxrstudy.data.synthetic --rebuild-patterns [--out FILE]   (needs torchxrayvision)
    python -m cxrstudy.data.synthetic --sheet /tmp/synthetic_sheet.png [--size 128] [--shortcut-strength 1]
    python -m cxrstudy.data.synthetic --benchmark [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import time

from cxrstudy.data.synthetic.config import SyntheticConfig
from cxrstudy.errors import CxrStudyError
from cxrstudy.hospitals import HOSPITALS


def benchmark(size: int, n: int = 400, config: SyntheticConfig | None = None) -> float:
    """Mean milliseconds per rendered image (single process), over all four hospitals."""
    from cxrstudy.data.synthetic.source import SyntheticSource

    config = config or SyntheticConfig()
    sources = [SyntheticSource(e, config) for e in HOSPITALS]
    for s in sources:
        s.render_row(0, size)  # tables and caches
    t0 = time.perf_counter()
    for i in range(n):
        s = sources[i % 4]
        s.render_row((i // 4) % len(s.table()), size)
    return (time.perf_counter() - t0) / n * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrstudy.data.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild-patterns", action="store_true",
                    help="rebuild the label-pattern file from torchxrayvision's shipped CSVs")
    ap.add_argument("--out", help="where to write the rebuilt patterns (default: the packaged file)")
    ap.add_argument("--sheet", metavar="PNG", help="save a contact sheet (4 hospitals x 6 images)")
    ap.add_argument("--benchmark", action="store_true", help="time the renderer")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--n-patients", type=int, default=1500)
    ap.add_argument("--shortcut-strength", type=float, default=1.0)
    ap.add_argument("--sign-strength", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.rebuild_patterns or args.sheet or args.benchmark):
        ap.print_help()
        return 2
    try:
        config = SyntheticConfig(n_patients=args.n_patients, shortcut_strength=args.shortcut_strength,
                                 sign_strength=args.sign_strength, seed=args.seed)
        if args.rebuild_patterns:
            from cxrstudy.data.synthetic.patterns import build_patterns, packaged_path, prevalence, write_patterns

            df = build_patterns()
            path = write_patterns(df, args.out or packaged_path())
            print(f"wrote {path} ({len(df)} patterns)")
            for env in HOSPITALS:
                prev = (prevalence(df, env) * 100).round(2)
                print(f"  {env:5s} " + "  ".join(f"{k}={v:.2f}" for k, v in prev.items()))
        if args.sheet:
            from cxrstudy.data.synthetic.preview import contact_sheet

            print(f"wrote {contact_sheet(args.sheet, config, size=args.size or 128)}")
        if args.benchmark:
            for size in ([args.size] if args.size else [64, 224]):
                print(f"{size}px: {benchmark(size, config=config):.3f} ms per image")
    except CxrStudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
