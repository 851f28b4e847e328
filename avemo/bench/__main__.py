"""`python -m avemo.bench {train,audio,video,predict} [args]`: the benchmark of that stage."""

import importlib
import sys

_BENCHMARKS = ("train", "audio", "video", "predict")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in _BENCHMARKS:
        print(f"usage: python -m avemo.bench {{{','.join(_BENCHMARKS)}}} [args]", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"avemo.bench.{sys.argv[1]}")
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
