"""The project's benchmark: time and peak memory per image size and method, block-wise vs dense attention.

    python benchmarks/run.py                                  # CPU: 336x448, 560x1120, 1080x1920 native
    python benchmarks/run.py --size 2160x3840 --device cuda   # any `glaclip bench` option

Writes benchmarks/results-<device>.md and benchmarks/results-<device>.png unless --out/--plot are given.
Same as `glaclip bench`; kept here so the numbers in README can be reproduced from a checkout.
"""

import sys

from glaclip.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    device = args[args.index("--device") + 1] if "--device" in args else "cpu"
    if "--device" not in args:
        args += ["--device", device]
    if "--out" not in args and "-o" not in args:
        args += ["--out", f"benchmarks/results-{device.split(':')[0]}.md"]
    if "--plot" not in args:
        args += ["--plot", f"benchmarks/results-{device.split(':')[0]}.png"]
    sys.argv = ["glaclip", "bench", *args]
    main()
