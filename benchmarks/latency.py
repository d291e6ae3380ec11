"""First-result latency of `glaclip segment` on CPU (the same as `glaclip bench --latency`).

    python benchmarks/latency.py                          # writes benchmarks/latency-cpu.md and .png
    python benchmarks/latency.py --baseline-src ../old    # also time an older checkout's code

Cases, each a fresh process from start to files written: text at the full 77-token context
(GLACLIP_FULL_CONTEXT_TEXT=1, no cache), short context with a cold and a warm cache, in fp32 and
bf16, for examples/classes.txt and the VOC21 class file; then text encoding alone, in-process.
"""

import sys

from glaclip.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args and "-o" not in args:
        args += ["--out", "benchmarks/latency-cpu.md"]
    if "--plot" not in args:
        args += ["--plot", "benchmarks/latency-cpu.png"]
    sys.argv = ["glaclip", "bench", "--latency", *args]
    main()
