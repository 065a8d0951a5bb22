"""geod's windowed resampling vs the gdalwarp binary: time, parity and peak RSS.

    .venv/bin/python bench/resample_vs_gdalwarp.py [--size large|small] [--dir DIR]

Input: a synthetic global float32 layer (tiled, deflate) at 1 arc-minute
(``large``, 21600 × 10800, ~0.9 GB decompressed) or 2 arc-minutes (``small``),
generated once into ``--dir`` (default: a temporary directory). Target grid:
global 5 arc-minutes, -ot Float32, nodata NaN, for each of average and bilinear
at 1 and 2 threads. gdalwarp runs with its defaults (``-multi -wo NUM_THREADS=2``
for two threads); geod runs ``resample_dataset`` in a child process with a
1 GiB memory budget and 1024-pixel windows.

With ``--repeat N`` each side runs N times alternately and the fastest run of
each counts (the usual defence against a busy machine). Printed per case:
geod_time / gdalwarp_time (geod's stage time; its whole process, Python imports
included, and the CPU-time ratio in brackets), parity (nodata masks equal, max
abs diff / data range) and geod peak RSS / gdalwarp peak RSS. Targets: stage
time ≤ 0.75× gdalwarp at 1 thread and ≤ 0.6× ``gdalwarp -multi -wo NUM_THREADS=2``
at 2, whole process ≤ 0.9×, RSS ratio < 0.25 on the large input, mask equal and
diff ≤ 1e-6. The load average is printed before and after: on a shared machine
the CPU-time ratio is steadier than the wall-time one.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from resample_child import gdalwarp, generate_source, geod, load_average, parity

SIZES = {"large": (21600, 10800), "small": (10800, 5400)}
#: Stage time / gdalwarp time targets by thread count, and for the whole process.
STAGE_TARGET = {1: 0.75, 2: 0.6}
PROCESS_TARGET = 0.9
#: Target grid resolution: 5 arc-minutes.
RESOLUTION = 5 / 60
WINDOW = 1024
BUDGET = "1GiB"
_MIB = 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--dir", type=Path, default=None, help="keep inputs here between runs")
    parser.add_argument("--methods", default="average,bilinear")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per side; the fastest counts (noisy machines)"
    )
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="geod-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    width, height = SIZES[args.size]
    source = generate_source(work / f"source_{width}x{height}.tif", width, height)
    print(f"input {source} ({width}×{height} float32), grid 5' global, window {WINDOW}, "
          f"budget {BUDGET}")  # fmt: skip
    print("time: wall seconds (CPU seconds); geod's stage time, then its whole process")
    print(load_average("before"))
    try:
        for method in args.methods.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                reference = work / f"gdalwarp_{method}_{threads}.tif"
                store = work / f"geod_{method}_{threads}.zarr"
                theirs = ours = None
                for _ in range(args.repeat):
                    shutil.rmtree(store, ignore_errors=True)
                    run = gdalwarp(source, reference, method, threads, RESOLUTION)
                    theirs = run if theirs is None or run.seconds < theirs.seconds else theirs
                    run = geod(source, store, method, threads, WINDOW, BUDGET, RESOLUTION)
                    if ours is None or run.detail["seconds"] < ours.detail["seconds"]:
                        ours = run
                assert theirs is not None and ours is not None
                same_mask, diff = parity(store, reference)
                stage, stage_cpu = ours.detail["seconds"], ours.detail["cpu_seconds"]
                print(
                    f"{method} threads={threads}: gdalwarp {theirs.seconds:.2f} s "
                    f"({theirs.cpu_seconds:.2f}), geod stage {stage:.2f} s ({stage_cpu:.2f}), "
                    f"process {ours.seconds:.2f} s ({ours.cpu_seconds:.2f})\n"
                    f"    geod_time/gdalwarp_time = {stage / theirs.seconds:.2f} "
                    f"(process {ours.seconds / theirs.seconds:.2f}, "
                    f"CPU {stage_cpu / theirs.cpu_seconds:.2f}); targets "
                    f"{STAGE_TARGET.get(threads, STAGE_TARGET[2])} (process {PROCESS_TARGET})\n"
                    f"    parity: mask {'equal' if same_mask else 'DIFFERENT'}, "
                    f"max abs diff / range = {diff:.2e}\n"
                    f"    peak RSS: geod {ours.peak_rss / _MIB:.0f} MiB / gdalwarp "
                    f"{theirs.peak_rss / _MIB:.0f} MiB = {ours.peak_rss / theirs.peak_rss:.2f}",
                    flush=True,
                )
                reference.unlink()
                shutil.rmtree(store)
        print(load_average("after"))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
