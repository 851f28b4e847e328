"""A few population steps of the tiny model on fixed batches; prints losses and parameters.

Invoked by tests/launch/test_population.py in subprocesses with 1 or 8 host CPU devices
(XLA_FLAGS must be set before jax is imported). Args: steps, member devices, member conv.
"""

import json
import sys

import numpy as np


def main(num_steps: int, member_devices: int, member_conv: str) -> None:
    import jax

    sys.path.insert(0, ".")
    from absl import flags

    flags.FLAGS(sys.argv[:1])
    from avemo import population, train
    from avemo.data import memory, pipeline
    from configs import tiny

    configs = []
    for seed, aux in ((0, 0.0), (1, 0.3), (2, 1.0), (3, 0.1)):
        c = tiny.get_config()
        c.seed, c.loss.aux_weight = seed, aux
        configs.append(c)
    sessions = memory.make_sessions(configs[0].data.memory)
    trainer = population.PopulationTrainer(
        configs,
        train.example_batch(sessions, configs[0], 1),
        num_steps,
        member_conv=member_conv,
        member_devices=member_devices,
    )
    state = trainer.init_state()
    data = iter(pipeline.train_dataset(sessions, configs[0]))
    losses = []
    for _ in range(num_steps):
        state, m = trainer.train_step(
            state, trainer.to_global(next(data)), trainer.base_rngs, trainer.hparam_arrays
        )
        losses.append(np.asarray(m["loss"]).tolist())
    leaves = [np.asarray(x).ravel() for x in jax.tree.leaves((state.params, state.batch_stats))]
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "mesh": dict(trainer.mesh.shape),
                "member_conv": trainer.member_conv,
                "sharding": str(jax.tree.leaves(state.params)[0].sharding.spec),
                "losses": losses,
                "params": np.concatenate(leaves).tolist(),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
