"""Runs a few train steps of the tiny model on fixed batches and prints losses and parameters.

Invoked by tests/core/test_sharding.py in subprocesses with different host device counts
(XLA_FLAGS must be set before jax is imported, so this cannot run in the pytest process).
"""

import json
import sys

import numpy as np


def main(num_steps: int) -> None:
    import jax

    sys.path.insert(0, ".")
    from absl import flags

    flags.FLAGS(sys.argv[:1])
    from avemo import train
    from avemo.data import memory, pipeline
    from configs import tiny

    config = tiny.get_config()
    sessions = memory.make_sessions(config.data.memory)
    trainer = train.Trainer(config, train.example_batch(sessions, config, 1), num_steps)
    state = trainer.init_state()
    data = iter(pipeline.train_dataset(sessions, config))
    batches = [next(data) for _ in range(num_steps)]
    losses = []
    for batch in batches:
        state, m = trainer.train_step(state, trainer.to_global(batch), trainer.base_rng)
        losses.append(float(m["loss"]))
    leaves = [np.asarray(x).ravel() for x in jax.tree.leaves((state.params, state.batch_stats))]
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "losses": losses,
                "params": np.concatenate(leaves).tolist(),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
