"""`python -m avemo.bench {train,profile,audio,video,predict} [args]`: that stage's benchmark."""

import importlib
import sys

_BENCHMARKS = ("train", "profile", "audio", "video", "predict")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in _BENCHMARKS:
        print(f"usage: python -m avemo.bench {{{','.join(_BENCHMARKS)}}} [args]", file=sys.stderr)
        sys.exit(2)
    # profile's module is not named profile: that would shadow the standard library's when
    # torch_reference.py runs as a script from this folder.
    name = {"profile": "step_profile"}.get(sys.argv[1], sys.argv[1])
    module = importlib.import_module(f"avemo.bench.{name}")
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
