"""Worker peak RSS of resampling an input and one with 4× the pixels, against the budget.

    .venv/bin/python bench/memory_scaling.py [--dir DIR] [--budget 1GiB] [--method average]

Inputs: synthetic global float32 layers (tiled, deflate) at 2 arc-minutes
(10800 × 5400) and 1 arc-minute (21600 × 10800, 4× the pixels, ~0.9 GB
decompressed), generated once into ``--dir`` (default: a temporary directory).
Both are resampled onto the same global 5 arc-minute grid by ``resample_dataset``
in a child process (2048-pixel windows), so each output window needs 4× more
source pixels in the second run: only GDAL's warp chunking, the block-cache cap
taken from the budget and the window size keep memory flat.

Printed: peak RSS of each run, the ratio large/small (target ≤ 1.15) and each
peak as a share of the memory budget (target < 1). The child's RSS includes the
interpreter and its imports (~80 MiB), measured the same way in both runs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from resample_child import generate_source, geod

SMALL, LARGE = (10800, 5400), (21600, 10800)
RESOLUTION = 5 / 60
WINDOW = 2048
_MIB = 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="keep inputs here between runs")
    parser.add_argument("--budget", default="1GiB")
    parser.add_argument("--method", default="average")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="geod-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        peaks = []
        for width, height in (SMALL, LARGE):
            source = generate_source(work / f"source_{width}x{height}.tif", width, height)
            store = work / f"scaling_{width}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            run = geod(source, store, args.method, 1, WINDOW, args.budget, RESOLUTION)
            shutil.rmtree(store)
            budget = run.detail["budget"]
            peaks.append(run.peak_rss)
            print(
                f"{width}×{height} {args.method}: peak RSS {run.peak_rss / _MIB:.0f} MiB = "
                f"{run.peak_rss / budget:.2f} of the {budget / _MIB:.0f} MiB budget "
                f"({run.detail['seconds']:.1f} s)",
                flush=True,
            )
        print(f"peak RSS ratio 4× input / input = {peaks[1] / peaks[0]:.2f} (target ≤ 1.15)")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
