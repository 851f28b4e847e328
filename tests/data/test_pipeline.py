"""Grain pipeline: windows cover sessions, resumed iterators repeat batches, eval stitching."""

import json

import jax
import numpy as np
import pytest

from avemo.data import memory, pipeline
from configs import tiny


def _sessions():
    c = tiny.get_config()
    return c, memory.make_sessions(c.data.memory)


def test_window_starts_cover_every_step():
    for t, window, hop in [(100, 20, 10), (105, 20, 10), (15, 20, 10), (20, 20, 7)]:
        covered = np.zeros(t, bool)
        for s in pipeline.window_starts(t, window, hop):
            covered[s : s + window] = True
        assert covered.all()


def test_resumed_iterator_gives_identical_batches():
    config, sessions = _sessions()
    it = iter(pipeline.train_dataset(sessions, config))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]
    resumed = iter(pipeline.train_dataset(sessions, config))
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(5)], strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_device_prefetch_hands_out_the_same_batches_and_the_consumed_state():
    config, sessions = _sessions()
    bare = iter(pipeline.train_dataset(sessions, config))
    ahead = pipeline.DevicePrefetch(
        iter(pipeline.train_dataset(sessions, config)), lambda b: b, size=3
    )
    for _ in range(4):
        want, got = next(bare), next(ahead)
        for key in want:
            np.testing.assert_array_equal(want[key], np.asarray(got[key]))
    # The thread has read ahead, but the state is that of the 4 batches handed out.
    assert json.loads(ahead.get_state()) == bare.get_state()
    expected = [next(bare) for _ in range(3)]
    resumed = pipeline.DevicePrefetch(
        iter(pipeline.train_dataset(sessions, config)), jax.device_put, size=2
    )
    resumed.set_state(ahead.get_state())
    ahead.close()
    for want, got in zip(expected, [next(resumed) for _ in range(3)], strict=True):
        for key in want:  # on the device (float64 features become float32 there)
            assert isinstance(got[key], jax.Array)
            np.testing.assert_array_equal(want[key].astype(got[key].dtype), np.asarray(got[key]))
    resumed.close()


def test_device_prefetch_raises_the_readers_error_in_the_loop():
    class Failing:
        def __init__(self):
            self.n = 0

        def get_state(self):
            return {"n": self.n}

        def set_state(self, state):
            self.n = state["n"]

        def __next__(self):
            self.n += 1
            if self.n == 3:
                raise OSError("disk gone")
            return {"x": np.full(2, self.n)}

    ahead = pipeline.DevicePrefetch(Failing(), lambda b: b, size=4)
    assert [int(next(ahead)["x"][0]) for _ in range(2)] == [1, 2]
    with pytest.raises(OSError, match="disk gone"):
        next(ahead)


def test_process_shards_partition_the_global_batch():
    config, sessions = _sessions()
    whole = next(iter(pipeline.train_dataset(sessions, config)))
    parts = [next(iter(pipeline.train_dataset(sessions, config, i, 2))) for i in range(2)]
    assert all(len(p["labels"]) == len(whole["labels"]) // 2 for p in parts)
    rows = lambda b: sorted(map(bytes, b["labels"].reshape(len(b["labels"]), -1)))  # noqa: E731
    assert rows(whole) == sorted(rows(parts[0]) + rows(parts[1]))


def test_eval_plan_stitches_back_every_step_exactly():
    config, sessions = _sessions()
    short = pipeline.PreparedSession(
        "dev_short", "dev", {k: v[:17] for k, v in sessions[-1].arrays.items()}
    )
    sessions = [s for s in sessions if s.split == "dev"] + [short]
    plan = pipeline.eval_plan(sessions, config)
    outputs = [{"outputs": b["labels"]} for b in plan.batches]  # an "identity model"
    stitched = pipeline.stitch(plan, outputs)
    for s in sessions:
        np.testing.assert_array_equal(stitched[s.name]["outputs"], s.arrays["labels"])
    # Every kept prediction had at least `context_steps` of history inside its window.
    for _, start, keep_from, _ in plan.placements:
        assert start == 0 or keep_from >= config.eval.context_steps


def test_spectrogram_patches_follow_the_configured_label_step():
    from avemo.audio import spectrogram as spectrogram_lib
    from avemo.config import base_config

    cfg = base_config()
    _, p_freq = spectrogram_lib.patch_shape(cfg.audio)
    logmel = np.random.default_rng(0).standard_normal((2000, p_freq)).astype(np.float32)
    session = pipeline.PreparedSession(
        "s", "train", {"face_present": np.ones(200, np.float32), "logmel": logmel}
    )
    for step_seconds in (0.04, 0.1):
        source = pipeline.WindowSource([session], 20, 20, cfg.audio, step_seconds)
        item = source[3]  # steps 60..79
        expected = spectrogram_lib.patches(logmel, np.arange(60, 80), cfg.audio, step_seconds)
        np.testing.assert_array_equal(item["spectrogram"], expected)
    assert not np.array_equal(
        pipeline.WindowSource([session], 20, 20, cfg.audio, 0.1)[3]["spectrogram"],
        pipeline.WindowSource([session], 20, 20, cfg.audio, 0.04)[3]["spectrogram"],
    )
