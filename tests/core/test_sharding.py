"""One device vs 8 host CPU devices: same loss for the same batch, close parameters after steps."""

import numpy as np

from tests.processes import host_device_probe


def _run(devices: int, steps: int) -> dict:
    return host_device_probe("tests/core/sharding_probe.py", [str(steps)], devices)


def test_one_vs_eight_devices_same_loss_and_close_parameters():
    one, eight = _run(1, 5), _run(8, 5)
    assert one["devices"] == 1 and eight["devices"] == 8
    np.testing.assert_allclose(eight["losses"][0], one["losses"][0], rtol=1e-6)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4)
    np.testing.assert_allclose(eight["params"], one["params"], rtol=1e-3, atol=1e-5)
