"""The raters' delay handled at the source (`data.label_delay_steps`, issue 9): training pairs the
inputs of step t with the label of step t + d, and every prediction is moved d steps later onto
the labels' clock -- in evaluation (`pipeline.stitch`) and in streaming prediction alike."""

import dataclasses

import numpy as np
import pytest

from avemo import config as config_lib
from avemo import train
from avemo.data import memory, pipeline
from avemo.inference import TrainedModel
from configs import tiny

DELAY = 6


def _config(delay=DELAY):
    c = tiny.get_config()
    c.data.label_delay_steps = delay
    c.train.modality_dropout = 0.0  # windows as cut (no silenced voice, no removed face)
    return c


def test_an_event_and_the_raters_late_response_meet_in_the_training_window():
    """A flash and a burst at step E in the inputs; the raters answer at E + d. After the delay
    the three sit at the same position of every training window that holds them."""
    config = _config()
    sessions = memory.make_sessions(config.data.memory)
    event = 40
    marked = []
    for s in sessions:
        a = {k: np.array(v) for k, v in s.arrays.items()}
        if s.split == "train":
            a["audio_features"][:, 0] = 0.0
            a["audio_features"][event, 0] = 50.0  # the burst
            a["faces"][...] = 0
            a["faces"][event] = 255  # the flash
            a["labels"][:, 0] = -1.0
            a["labels"][event + DELAY, 0] = 1.0  # the raters' response, d steps late
        marked.append(dataclasses.replace(s, arrays=a))
    shifted = pipeline.delay_targets(marked[0], DELAY)
    assert shifted.num_steps == marked[0].num_steps - DELAY
    assert len(shifted.arrays["labels"]) == shifted.num_steps
    seen = 0
    it = iter(pipeline.train_dataset(marked, config))
    for _ in range(40):
        batch = next(it)
        for row in range(len(batch["labels"])):
            keep = batch["mask"][row] > 0
            burst = np.flatnonzero((batch["audio_features"][row, :, 0] > 25) & keep)
            flash = np.flatnonzero((batch["faces"][row].reshape(len(keep), -1).max(-1) > 0) & keep)
            response = np.flatnonzero((batch["labels"][row, :, 0] > 0) & keep)
            np.testing.assert_array_equal(burst, response)
            np.testing.assert_array_equal(flash, response)
            seen += len(response)
    assert seen > 0
    # Without the delay the response comes d steps after the burst.
    plain = pipeline._cut(marked[0], 0, 100, None)
    assert np.flatnonzero(plain["labels"][:, 0] > 0)[0] - event == DELAY


def test_delay_needs_a_session_longer_than_it():
    config, sessions = _config(), memory.make_sessions(tiny.get_config().data.memory)
    short = pipeline.PreparedSession(
        "tiny_train", "train", {k: v[:DELAY] for k, v in sessions[0].arrays.items()}
    )
    with pytest.raises(ValueError, match="tiny_train"):
        pipeline.train_dataset([short], config)


def test_onto_label_clock_moves_predictions_later_and_holds_the_first():
    values = np.arange(10, dtype=np.float32)[:, None] * [1.0, -1.0]
    moved = pipeline.onto_label_clock(values, 3)
    np.testing.assert_array_equal(moved[3:], values[:7])
    np.testing.assert_array_equal(moved[:3], np.repeat(values[:1], 3, 0))
    np.testing.assert_array_equal(pipeline.onto_label_clock(values, 0), values)
    np.testing.assert_array_equal(pipeline.onto_label_clock(values[:2], 5), values[[0, 0]])


def test_evaluation_and_streaming_prediction_put_outputs_on_the_labels_clock():
    config = _config()
    sessions = memory.make_sessions(config.data.memory)
    dev = [s for s in sessions if s.split == "dev"]
    # Stitching: an "identity model" (its outputs are the window's labels) comes back d late.
    plan = pipeline.eval_plan(dev, config)
    stitched = pipeline.stitch(plan, [{"outputs": b["labels"]} for b in plan.batches])
    for s in dev:
        want = pipeline.onto_label_clock(s.arrays["labels"], DELAY)
        np.testing.assert_array_equal(stitched[s.name]["outputs"], want)
    # A model: the whole-plan prediction and the streaming one agree, both moved by d.
    example = train.example_batch(sessions, config, config.eval.batch_size)
    trainer = train.Trainer(config, example, total_steps=1)
    model = TrainedModel(config, trainer, trainer.init_state(), 0, "")
    whole = model.predict(dev[:1])[dev[0].name]
    streamed = model.predict_streaming(dev[0])
    np.testing.assert_allclose(streamed["outputs"], whole["outputs"], atol=1e-5)
    np.testing.assert_allclose(streamed["audio_gate"], whole["audio_gate"], atol=1e-5)
    undelayed = TrainedModel(_config(0), trainer, model.state, 0, "")
    raw = undelayed.predict(dev[:1])[dev[0].name]
    np.testing.assert_allclose(
        whole["outputs"], pipeline.onto_label_clock(raw["outputs"], DELAY), atol=1e-5
    )
    np.testing.assert_allclose(whole["audio_gate"], raw["audio_gate"], atol=1e-5)  # signal clock


def test_label_delay_is_validated():
    c = tiny.get_config()
    c.data.label_delay_steps = -1
    with pytest.raises(config_lib.ConfigError, match="label_delay_steps"):
        config_lib.validate(c)
