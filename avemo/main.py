"""Command line: `python -m avemo.main --config configs/X.py --workdir W [--config.key=value]`.

Parses flags, joins a multi-process run if launched as one (`avemo.distributed`: SLURM, or
`--coordinator host:port --num_processes N --process_id i`), and calls
`avemo.train.train_and_evaluate(config, workdir)`; configuration errors exit non-zero with one line.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags  # noqa: F401 (app.UsageError)
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.DEFINE_string("coordinator", None, "Multi-process: host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index in [0, N).")
flags.mark_flags_as_required(["config", "workdir"])


class _DropExpectedOrbaxNoise(logging.Filter):
    """Saves between evaluations carry no dev metric by design; Orbax warns about each."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


def configure_logging() -> None:
    """avemo's own progress at INFO; libraries (Orbax logs through absl) at WARNING."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    logging.getLogger("avemo").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_DropExpectedOrbaxNoise())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    configure_logging()
    from avemo import config as config_lib
    from avemo import distributed, train

    try:
        config_lib.validate(FLAGS.config)
        if distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id):
            distributed.quiet_unless_chief()
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (config_lib.ConfigError, distributed.DistributedError, train.NonFiniteLossError) as err:
        print(f"avemo: error: {err}", file=sys.stderr)
        sys.exit(2)


def _override_naming(field: str, argv: list[str]) -> str:
    for arg in argv:
        if arg.startswith("--config.") and field in arg.split("=", 1)[0].split("."):
            return arg.split("=", 1)[0][2:]
    return field


def run(argv: list[str] | None = None) -> None:
    """Parses flags (one-line errors, exit 2), then runs `main`."""
    argv = list(sys.argv if argv is None else argv)
    try:
        remaining = FLAGS(argv)
    except (AttributeError, KeyError) as err:  # ConfigDict: --config.<unknown key>=...
        field = str(err).strip("'\"")
        print(f"avemo: error: unknown config key {_override_naming(field, argv)}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as err:  # wrong type, missing required flag, unreadable config file
        print(f"avemo: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        FLAGS.config.keys()  # config_flags defers config-file errors to first access
    except Exception as err:  # noqa: BLE001 -- any failure to load the file is one user error
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        print(
            f"avemo: error: cannot load {FLAGS['config'].config_filename}: {lines[-1]}",
            file=sys.stderr,
        )
        sys.exit(2)
    main(remaining)


if __name__ == "__main__":
    run()
