"""Worker peak RSS of resampling an input and one with 4× the pixels, against the budget.

    .venv/bin/python bench/memory_scaling.py [--dir DIR] [--budget 1GiB] [--method average]
                                             [--quick]

Inputs: synthetic global float32 layers (tiled, deflate) at 2 arc-minutes
(10800 × 5400) and 1 arc-minute (21600 × 10800, 4× the pixels, ~0.9 GB
decompressed), generated once into ``--dir`` (default: a temporary directory);
``--quick`` halves both inputs per axis (4 and 2 arc-minutes), a few seconds a run.
Both are resampled onto the same global 5 arc-minute grid by ``resample_dataset``
in a child process (2048-pixel windows), so each output window needs 4× more
source pixels in the second run: only GDAL's warp chunking, the block-cache cap
taken from the budget and the window size keep memory flat.

Printed: peak RSS of each run, the ratio large/small (target ≤ 1.15) and each
peak as a share of the memory budget (target < 1). The child's RSS includes the
interpreter and its imports (~80 MiB), measured the same way in both runs. The
window a run used is printed too: the governor caps it when its estimated cost
does not fit the budget (:meth:`pipeline.memory.MemoryGovernor.fit`). The load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from resample_child import generate_source, geod, load_average

SMALL, LARGE = (10800, 5400), (21600, 10800)
#: Per-axis scale of both inputs with --quick.
QUICK = 0.5
RESOLUTION = 5 / 60
WINDOW = 2048
_MIB = 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="keep inputs here between runs")
    parser.add_argument("--budget", default="1GiB")
    parser.add_argument("--method", default="average")
    parser.add_argument("--quick", action="store_true", help="inputs half as wide and high")
    args = parser.parse_args()
    scale = QUICK if args.quick else 1
    work = args.dir or Path(tempfile.mkdtemp(prefix="geod-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        peaks = []
        print(load_average("before"), flush=True)
        for width, height in ((int(w * scale), int(h * scale)) for w, h in (SMALL, LARGE)):
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
                f"({run.detail['seconds']:.1f} s, window {run.detail['window_size']})",
                flush=True,
            )
        print(f"peak RSS ratio 4× input / input = {peaks[1] / peaks[0]:.2f} (target ≤ 1.15)")
        print(load_average("after"))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
