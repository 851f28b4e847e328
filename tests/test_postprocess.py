"""AVEC-style post-processing: each step against its closed form, the keep-only-if-better rules."""

import json

import ml_collections
import numpy as np
import pytest

from avemo import config as config_lib
from avemo import postprocess
from avemo.metrics import ccc


def _cfg(**enabled) -> ml_collections.ConfigDict:
    cfg = config_lib.base_config().postprocess
    cfg.unlock()
    for step in postprocess.STEPS:
        cfg[step] = enabled.get(step, False)
    cfg.max_delay_steps = 20
    cfg.median_window_steps = 5
    cfg.keep_rule = enabled.get("keep_rule", "in_sample")
    return cfg


def _smooth(rng, n, width=15):
    kernel = np.hanning(width) / np.hanning(width).sum()
    return np.convolve(rng.standard_normal(n + width), kernel, mode="same")[:n]


def _pair(rng, n=400):
    return np.stack([_smooth(rng, n), _smooth(rng, n)], axis=1)


@pytest.mark.parametrize("delay", [7, -4, 0])
def test_delay_recovers_a_known_shift(delay):
    rng = np.random.default_rng(1)
    preds = {f"s{i}": _pair(rng) for i in range(3)}
    # Gold lags the signals by `delay` steps: gold[t] = x[t - delay].
    gold = {n: postprocess.shift(x, delay) for n, x in preds.items()}
    params = postprocess.fit(preds, gold, [], _cfg(delay=True))
    for dim in ("arousal", "valence"):
        fitted = params["dimensions"][dim]["delay"]
        assert fitted["steps"] == delay
        assert fitted["ccc_after"] > 0.99
    for name, x in preds.items():
        np.testing.assert_allclose(postprocess.apply(x, params), gold[name], atol=1e-6)


def test_shift_holds_edges():
    x = np.arange(5.0)
    np.testing.assert_array_equal(postprocess.shift(x, 2), [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(postprocess.shift(x, -2), [2, 3, 4, 4, 4])


def test_bias_and_scale_are_exact():
    rng = np.random.default_rng(2)
    gold = {f"s{i}": _pair(rng) for i in range(2)}
    preds = {n: 0.5 * g + np.array([0.3, -0.2]) for n, g in gold.items()}
    train = [_pair(rng) * 2.0, _pair(rng) * 2.0]
    params = postprocess.fit(preds, gold, train, _cfg(bias=True, scale=True))
    all_gold = np.concatenate(list(gold.values()))
    all_pred = np.concatenate(list(preds.values()))
    train_std = np.concatenate(train).std(axis=0)
    for d, dim in enumerate(("arousal", "valence")):
        steps = params["dimensions"][dim]
        offset = all_gold[:, d].mean() - all_pred[:, d].mean()
        assert steps["bias"]["offset"] == pytest.approx(offset, abs=1e-12)
        assert steps["bias"]["applied"]
        assert steps["scale"]["center"] == pytest.approx(all_gold[:, d].mean(), abs=1e-9)
        assert steps["scale"]["factor"] == pytest.approx(train_std[d] / all_pred[:, d].std())
    out = np.concatenate([postprocess.apply(preds[n], params) for n in sorted(preds)])
    for d, dim in enumerate(("arousal", "valence")):
        if params["dimensions"][dim]["scale"]["applied"]:
            assert out[:, d].std() == pytest.approx(train_std[d], rel=1e-5)
        assert out[:, d].mean() == pytest.approx(all_gold[:, d].mean(), abs=1e-5)


def test_median_matches_brute_force_and_removes_spikes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50)
    padded = np.concatenate([[x[0]] * 2, x, [x[-1]] * 2])
    expected = np.array([np.median(padded[i : i + 5]) for i in range(50)])
    np.testing.assert_allclose(postprocess.median_smooth(x, 5), expected)
    spikes = np.zeros(20)
    spikes[[4, 11]] = 5.0
    np.testing.assert_array_equal(postprocess.median_smooth(spikes, 3), np.zeros(20))


def test_fit_never_lowers_dev_ccc_and_apply_reproduces_it():
    rng = np.random.default_rng(4)
    gold = {f"s{i}": _pair(rng, 300) for i in range(3)}
    preds = {
        n: 0.3 * postprocess.shift(g, -5) + 0.1 * rng.standard_normal(g.shape) + 0.4
        for n, g in gold.items()
    }
    train = [_pair(rng, 300)]
    cfg = _cfg(delay=True, bias=True, scale=True, median=True)
    params = postprocess.fit(preds, gold, train, cfg)
    out = {n: postprocess.apply(preds[n], params) for n in preds}
    for d, dim in enumerate(("arousal", "valence")):
        steps = params["dimensions"][dim]
        raw = ccc(np.concatenate([preds[n][:, d] for n in sorted(preds)]),
                  np.concatenate([gold[n][:, d] for n in sorted(gold)]))  # fmt: skip
        chain = [steps[s] for s in postprocess.STEPS if s in steps]  # no face head: no weight
        assert chain[0]["ccc_before"] == pytest.approx(raw)
        for before, after in zip(chain, chain[1:], strict=False):
            assert after["ccc_before"] == pytest.approx(before["ccc_after"])
            assert before["ccc_after"] >= before["ccc_before"]
        final = ccc(np.concatenate([out[n][:, d] for n in sorted(out)]),
                    np.concatenate([gold[n][:, d] for n in sorted(gold)]))  # fmt: skip
        assert final == pytest.approx(chain[-1]["ccc_after"], abs=1e-5)
        assert final > raw
        assert steps["delay"]["steps"] == 5


def test_a_step_that_would_lower_ccc_is_skipped():
    rng = np.random.default_rng(5)
    rough = rng.standard_normal((200, 2))  # white noise: a median filter destroys it
    params = postprocess.fit({"s": rough}, {"s": rough}, [], _cfg(median=True))
    for dim in ("arousal", "valence"):
        step = params["dimensions"][dim]["median"]
        assert not step["applied"]
        assert step["ccc_if_applied"] < step["ccc_before"] == step["ccc_after"] == 1.0
    np.testing.assert_allclose(postprocess.apply(rough, params), rough, atol=1e-6)


def test_save_load_round_trip_is_atomic(tmp_path):
    rng = np.random.default_rng(6)
    preds = {"s": _pair(rng)}
    params = postprocess.fit(preds, preds, [preds["s"]], _cfg(bias=True, median=True))
    postprocess.save(tmp_path, params)
    assert [p.name for p in tmp_path.iterdir()] == [postprocess.FILE]
    assert postprocess.load(tmp_path) == json.loads(json.dumps(params))
    assert postprocess.load(tmp_path / "missing") is None


def test_config_rejects_an_even_median_window():
    config = config_lib.base_config()
    config.postprocess.median_window_steps = 4
    with pytest.raises(config_lib.ConfigError, match="median_window_steps"):
        config_lib.validate(config)


def _sessions_with_offsets(rng, offsets, n=300):
    """Predictions that track gold closely, each session with its own constant offset."""
    gold = {f"s{i}": _pair(rng, n) for i in range(len(offsets))}
    preds = {
        name: g + 0.05 * rng.standard_normal(g.shape) + off
        for (name, g), off in zip(gold.items(), offsets, strict=True)
    }
    return preds, gold


def test_cross_fitted_rule_drops_a_bias_that_only_fits_its_own_sessions():
    """Per-session offsets of opposite sign: the pooled bias fitted on all dev sessions raises
    their in-sample CCC a little, but fitted on two sessions it pushes the third one away; the
    in-sample rule keeps it, the cross-fitted rule does not."""
    rng = np.random.default_rng(7)
    preds, gold = _sessions_with_offsets(rng, [0.5, -0.1, -0.1])
    in_sample = postprocess.fit(preds, gold, [], _cfg(bias=True))
    cross = postprocess.fit(preds, gold, [], _cfg(bias=True, keep_rule="cross_fitted"))
    assert cross["keep_rule"] == "cross_fitted" and in_sample["keep_rule"] == "in_sample"
    for dim in ("arousal", "valence"):
        a, b = in_sample["dimensions"][dim]["bias"], cross["dimensions"][dim]["bias"]
        assert a["applied"] and a["ccc_if_applied"] >= a["ccc_before"]
        assert a["offset"] == pytest.approx(b["offset"])  # the same fit; only the rule differs
        # the held-out score, recomputed by hand: each session shifted by the others' bias
        names = sorted(preds)
        d = ("arousal", "valence").index(dim)
        held = []
        for name in names:
            others = [n for n in names if n != name]
            off = (
                np.concatenate([gold[n][:, d] for n in others]).mean()
                - np.concatenate([preds[n][:, d] for n in others]).mean()
            )
            held.append(preds[name][:, d] + off)
        expected = ccc(np.concatenate(held), np.concatenate([gold[n][:, d] for n in names]))
        assert b["ccc_held_out_if_applied"] == pytest.approx(expected)
        assert b["ccc_held_out_if_applied"] < b["ccc_before"]
        assert not b["applied"]


def test_cross_fitted_rule_keeps_a_bias_every_session_shares():
    rng = np.random.default_rng(8)
    preds, gold = _sessions_with_offsets(rng, [0.3, 0.35, 0.25])
    params = postprocess.fit(preds, gold, [], _cfg(bias=True, delay=True, keep_rule="cross_fitted"))
    for dim in ("arousal", "valence"):
        bias = params["dimensions"][dim]["bias"]
        assert bias["applied"] and bias["ccc_held_out_if_applied"] > bias["ccc_before"]
        assert bias["offset"] == pytest.approx(-0.3, abs=0.05)


def test_cross_fitted_rule_with_one_dev_session_falls_back_to_in_sample():
    rng = np.random.default_rng(9)
    preds, gold = _sessions_with_offsets(rng, [0.4])
    params = postprocess.fit(preds, gold, [], _cfg(bias=True, keep_rule="cross_fitted"))
    assert params["keep_rule"] == "in_sample"
    assert params["dimensions"]["arousal"]["bias"]["applied"]


def test_config_rejects_an_unknown_keep_rule():
    config = config_lib.base_config()
    config.postprocess.keep_rule = "always"
    with pytest.raises(config_lib.ConfigError, match="keep_rule"):
        config_lib.validate(config)


def _face_sessions(rng, n=400, voice_noise=0.8, face_noise=0.1):
    """Dev sessions whose model output carries a wrong (memorised) voice component while its
    face head reads the gold standard closely; no face on the last quarter of each session."""
    preds, gold, faces = {}, {}, {}
    for i in range(3):
        g = _pair(rng, n)
        present = np.ones(n)
        present[3 * n // 4 :] = 0.0
        face_head = g + face_noise * _pair(rng, n)
        preds[f"s{i}"] = g + voice_noise * _pair(rng, n)
        gold[f"s{i}"] = g
        faces[f"s{i}"] = (face_head, present)
    return preds, gold, faces


def test_face_weight_moves_toward_the_face_head_where_a_face_is_in_view():
    rng = np.random.default_rng(5)
    preds, gold, faces = _face_sessions(rng)
    params = postprocess.fit(preds, gold, [], _cfg(face_weight=True), faces)
    for d, dim in enumerate(("arousal", "valence")):
        step = params["dimensions"][dim]["face_weight"]
        assert step["applied"] and step["weight"] >= 0.8  # the face head is far better here
        # the chosen weight is the grid's best pooled CCC (recomputed by hand)
        best = max(
            postprocess.FACE_WEIGHTS,
            key=lambda w: ccc(
                np.concatenate(
                    [preds[n][:, d] + w * faces[n][1] * (faces[n][0][:, d] - preds[n][:, d])
                     for n in sorted(preds)]
                ),
                np.concatenate([gold[n][:, d] for n in sorted(preds)]),
            ),
        )  # fmt: skip
        assert step["weight"] == pytest.approx(best)
    out = postprocess.apply(preds["s0"], params, faces["s0"])
    w = np.array([params["dimensions"][d]["face_weight"]["weight"] for d in ("arousal", "valence")])
    expected = preds["s0"] + w * faces["s0"][1][:, None] * (faces["s0"][0] - preds["s0"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # no face in view: the model's own output, untouched
    np.testing.assert_allclose(out[300:], preds["s0"][300:], rtol=1e-6)


def test_face_weight_is_dropped_when_the_face_head_does_not_help_held_out_sessions():
    rng = np.random.default_rng(6)
    # the model's output is already the gold standard; the face head is only noise
    preds, gold, faces = _face_sessions(rng, voice_noise=0.0, face_noise=1.0)
    params = postprocess.fit(
        preds, gold, [], _cfg(face_weight=True, keep_rule="cross_fitted"), faces
    )
    for dim in ("arousal", "valence"):
        step = params["dimensions"][dim]["face_weight"]
        assert step["weight"] == 0.0 or not step["applied"]
        np.testing.assert_allclose(
            postprocess.apply(preds["s1"], params, faces["s1"]), preds["s1"], rtol=1e-5, atol=1e-6
        )


def test_face_weight_without_a_face_head_is_skipped_and_apply_needs_the_face_it_was_fitted_with():
    rng = np.random.default_rng(7)
    preds, gold, faces = _face_sessions(rng)
    params = postprocess.fit(preds, gold, [], _cfg(face_weight=True, bias=True))
    assert all("face_weight" not in steps for steps in params["dimensions"].values())
    assert postprocess.face_of({"outputs": preds["s0"]}, faces["s0"][1]) is None
    fitted = postprocess.fit(preds, gold, [], _cfg(face_weight=True), faces)
    with pytest.raises(ValueError, match="face_weight"):
        postprocess.apply(preds["s0"], fitted)
    face = postprocess.face_of(
        {"outputs": preds["s0"], "video_outputs": faces["s0"][0]}, faces["s0"][1]
    )
    np.testing.assert_allclose(face[0], faces["s0"][0])


def test_moving_average_matches_brute_force_with_edges_held():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 2))
    padded = np.concatenate([np.repeat(x[:1], 3, 0), x, np.repeat(x[-1:], 3, 0)])
    expected = np.stack([padded[i : i + 7].mean(0) for i in range(40)])
    np.testing.assert_allclose(postprocess.moving_average(x, 7), expected, atol=1e-12)
    np.testing.assert_array_equal(postprocess.moving_average(x, 1), x)


def test_smooth_picks_a_window_that_removes_fast_errors_and_keeps_the_spread():
    # Gold: a slow signal; predictions: the gold plus white errors (what the raters' wide low-pass
    # leaves for a model to get wrong). The dev-chosen window must beat no smoothing on held-out
    # sessions, and the step must restore the outputs' pooled spread (gain) on the dev sessions.
    rng = np.random.default_rng(12)
    gold = {f"s{i}": np.stack([_smooth(rng, 600, 61), _smooth(rng, 600, 61)], 1) for i in range(4)}
    gold = {n: g / np.concatenate(list(gold.values())).std(0) for n, g in gold.items()}
    preds = {n: g + 0.8 * rng.standard_normal(g.shape) for n, g in gold.items()}
    dev = {n: preds[n] for n in ("s0", "s1", "s2")}
    cfg = _cfg(smooth=True, keep_rule="cross_fitted")
    params = postprocess.fit(dev, {n: gold[n] for n in dev}, [], cfg)
    pooled = np.concatenate([dev[n] for n in sorted(dev)])
    out = np.concatenate([postprocess.apply(dev[n], params) for n in sorted(dev)])
    for d, dim in enumerate(("arousal", "valence")):
        step = params["dimensions"][dim]["smooth"]
        assert step["applied"] and step["window"] > 1
        assert step["window"] in cfg.smooth_windows
        assert out[:, d].std() == pytest.approx(pooled[:, d].std(), rel=1e-5)
        held = postprocess.apply(preds["s3"], params)[:, d]
        assert ccc(held, gold["s3"][:, d]) > ccc(preds["s3"][:, d], gold["s3"][:, d]) + 0.1


def test_smooth_keeps_outputs_as_they_are_when_the_gold_moves_fast():
    rng = np.random.default_rng(13)
    rough = {f"s{i}": rng.standard_normal((300, 2)) for i in range(3)}
    params = postprocess.fit(rough, rough, [], _cfg(smooth=True, keep_rule="cross_fitted"))
    for x in rough.values():
        np.testing.assert_allclose(postprocess.apply(x, params), x, atol=1e-6)
    for dim in ("arousal", "valence"):
        assert params["dimensions"][dim]["smooth"]["window"] == 1


def test_parameters_saved_before_the_smooth_step_still_apply():
    # A postprocess.json written before the step existed has no "smooth" entry: apply replays the
    # steps it has, unchanged.
    rng = np.random.default_rng(14)
    gold = _pair(rng)
    preds = {"s": gold + np.array([0.25, -0.5])}
    params = postprocess.fit(preds, {"s": gold}, [], _cfg(bias=True))
    params = json.loads(json.dumps(params))
    assert all("smooth" not in steps for steps in params["dimensions"].values())
    np.testing.assert_allclose(postprocess.apply(preds["s"], params), gold, atol=1e-6)


@pytest.mark.parametrize("windows", [(), (4,), (0, 5), (5.0,), (True,)])
def test_config_rejects_bad_smooth_windows(windows):
    c = config_lib.base_config()
    c.postprocess.smooth_windows = windows
    with pytest.raises(config_lib.ConfigError, match="smooth_windows"):
        config_lib.validate(c)


def _weights(params, step):
    return np.array([params["dimensions"][d][step]["weight"] for d in ("arousal", "valence")])


def test_voice_weight_moves_toward_the_voice_head_by_the_speech_energy():
    # The voice head reads the gold standard closely; the output carries a wrong face component.
    # m: full speech, a half-loud span and silence (m = 0: the output must stay untouched).
    rng = np.random.default_rng(15)
    preds, gold, voices = _face_sessions(rng)  # (head, presence) pairs: here the voice's
    voices = {n: (head, np.r_[np.ones(200), np.full(100, 0.5), np.zeros(100)] * 1.3 - 0.15)
              for n, (head, _) in voices.items()}  # fmt: skip
    params = postprocess.fit(preds, gold, [], _cfg(voice_weight=True), None, voices)
    m = np.clip(voices["s0"][1], 0.0, 1.0)
    for dim in ("arousal", "valence"):
        step = params["dimensions"][dim]["voice_weight"]
        assert step["applied"] and step["weight"] >= 0.8
    stream = postprocess.voice_of(
        {"outputs": preds["s0"], "audio_outputs": voices["s0"][0]}, voices["s0"][1]
    )
    np.testing.assert_allclose(stream[1], m)  # m clipped to [0, 1], as the model saw it
    out = postprocess.apply(preds["s0"], params, voice=stream)
    w = _weights(params, "voice_weight")
    expected = preds["s0"] + w * m[:, None] * (voices["s0"][0] - preds["s0"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[300:], preds["s0"][300:], rtol=1e-6)  # silence: untouched
    with pytest.raises(ValueError, match="voice_weight"):
        postprocess.apply(preds["s0"], params, face=stream)
    assert postprocess.voice_of({"outputs": preds["s0"]}, m) is None


def test_voice_weight_is_fitted_after_the_face_weight_on_its_output():
    rng = np.random.default_rng(16)
    preds, gold, faces = _face_sessions(rng, voice_noise=0.8, face_noise=0.4)
    voices = {n: (gold[n] + 0.2 * _pair(rng, 400), np.ones(400)) for n in preds}
    cfg = _cfg(face_weight=True, voice_weight=True)
    params = postprocess.fit(preds, gold, [], cfg, faces, voices)
    for dim in ("arousal", "valence"):
        steps = params["dimensions"][dim]
        assert list(steps) == ["face_weight", "voice_weight"]
        after_face = steps["face_weight"]["ccc_after"]
        assert steps["voice_weight"]["ccc_before"] == pytest.approx(after_face)
    out = postprocess.apply(preds["s1"], params, faces["s1"], voices["s1"])
    wf, wv = _weights(params, "face_weight"), _weights(params, "voice_weight")
    y = preds["s1"] + wf * faces["s1"][1][:, None] * (faces["s1"][0] - preds["s1"])
    y = y + wv * (voices["s1"][0] - y)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
