"""avemo's XLA CPU defaults (avemo/xla_flags.py): added once, never over a user's setting, and
accepted by the installed XLA (an unknown value would abort every avemo process at start-up)."""

import subprocess
import sys

from avemo import xla_flags


def test_defaults_are_added_once_and_respect_the_users_setting():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply_defaults(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {xla_flags.YNN_FLAG}"
    assert not xla_flags.apply_defaults(env)  # already there
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
    own = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    assert not xla_flags.apply_defaults(own)
    assert own["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    off = {"AVEMO_XLA_DEFAULTS": "0"}
    assert not xla_flags.apply_defaults(off)
    assert "XLA_FLAGS" not in off


def test_the_installed_xla_accepts_the_flag_and_convolves_with_it():
    code = (
        "import os, avemo, jax, jax.numpy as jnp, numpy as np\n"
        "assert avemo.xla_flags.YNN_FLAG in os.environ['XLA_FLAGS']\n"
        "x = jnp.ones((2, 8, 8, 1)); w = jnp.ones((3, 3, 1, 4))\n"
        "y = jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "g = jax.grad(lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum())(w)\n"
        "np.testing.assert_allclose(y, 9.0); np.testing.assert_allclose(g, 72.0)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
