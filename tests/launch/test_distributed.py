"""avemo.distributed.plan: when and how a process joins a multi-process run."""

import pytest

from avemo import distributed

SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "gpu[003-004]",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def test_single_process_initialises_nothing():
    assert distributed.plan(environ={}) is None
    assert distributed.plan(num_processes=1, environ={}) is None
    assert distributed.plan(environ={**SLURM, "SLURM_NTASKS": "1"}) is None


def test_explicit_flags_then_environment():
    p = distributed.plan("localhost:1234", 2, 1, environ={})
    assert (p.source, p.coordinator, p.num_processes, p.process_id) == (
        "flags",
        "localhost:1234",
        2,
        1,
    )
    env = {"AVEMO_COORDINATOR": "node1:999", "AVEMO_NUM_PROCESSES": "4", "AVEMO_PROCESS_ID": "3"}
    p = distributed.plan(environ=env)
    assert (p.source, p.coordinator, p.num_processes, p.process_id) == ("env", "node1:999", 4, 3)
    assert distributed.plan("h:1", 2, 0, environ=env).source == "flags"


def test_slurm_one_task_per_node_uses_all_gpus_of_the_node():
    env = {**SLURM, "SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"}
    p = distributed.plan(environ=env)
    assert p.source == "slurm" and p.coordinator is None  # left to jax's SLURM detection
    assert p.local_device_ids == (0, 1, 2, 3)
    per_gpu = {**env, "SLURM_NTASKS": "8"}  # one task per GPU: jax's default pinning
    assert distributed.plan(environ=per_gpu).local_device_ids is None


@pytest.mark.parametrize(
    "args, needle",
    [
        (("localhost:1", 2, None), "process's id"),
        ((None, 2, 0), "coordinator"),
        (("localhost", 2, 0), "host:port"),
        (("localhost:1", 2, 2), "not in [0, 2)"),
    ],
)
def test_partial_specification_is_an_error(args, needle):
    with pytest.raises(
        distributed.DistributedError,
        match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)"),
    ):
        distributed.plan(*args, environ={})
