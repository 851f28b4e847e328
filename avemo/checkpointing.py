"""One Orbax CheckpointManager per workdir: train state + Grain iterator state + run metadata.

Keeps the latest checkpoint and the best one by a dev metric (Orbax's `max_to_keep` with `best_fn`
alone keeps the N *best* and may delete the latest, so both are kept by an explicit preservation
policy). "Best" is the maximum of a CCC or R² metric and the minimum of an RMSE metric
(`best_mode`); only metrics of the dev split are passed in, so no other split can pick it.
Saves are asynchronous; a resumed run restores the state onto its shardings through an abstract
target (restoring without one turns optax's namedtuples into lists).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def best_mode(metric: str) -> str:
    """ "min" for an error metric (RMSE, a loss), "max" for a score (CCC, R²).

    Raises:
      ValueError: for a metric name that says neither.
    """
    name = (metric.split("/")[-2] if "/" in metric else metric).lower()  # [split/]name/dimension
    if name.startswith(("rmse", "loss", "mse", "mae")):
        return "min"
    if name.startswith(("ccc", "r2")):
        return "max"
    raise ValueError(f"cannot tell whether {metric!r} is better high or low (ccc/r2 or rmse)")


class Checkpointer:
    """Saves and restores (state, data iterator, metadata) under `workdir/checkpoints`."""

    def __init__(self, workdir: str, best_metric: str | None, async_save: bool = True):
        """`best_metric` None keeps the latest checkpoint only (no selection, e.g. the shared
        state of a population, whose members select their own best)."""
        self.best_metric = best_metric
        if best_metric is None:
            self.best_mode = None
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=async_save, max_to_keep=1
            )
        else:
            self.best_mode = best_mode(best_metric)
            get_metric = lambda metrics: metrics[best_metric]  # noqa: E731
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=async_save,
                best_fn=get_metric,
                best_mode=self.best_mode,
                preservation_policy=policies.AnyPreservationPolicy(
                    [
                        policies.LatestN(1),
                        policies.BestN(
                            get_metric_fn=get_metric,
                            reverse=self.best_mode == "min",  # the best sorts last either way
                            n=1,
                            keep_checkpoints_without_metrics=False,
                        ),
                    ]
                ),
            )
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def delete(self, step: int) -> None:
        self._manager.delete(step)

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any | None,
        meta: dict,
        metrics: dict[str, float] | None = None,
    ) -> None:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if metrics is not None and self.best_metric not in metrics:
            metrics = None
        self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(
        self, step: int, abstract_state: Any, data_iterator: Any | None
    ) -> tuple[Any, dict]:
        """Restores the state (onto the shardings of `abstract_state`) and the iterator in place."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["meta"]

    def restore_untyped(self, step: int) -> dict:
        """The saved state at `step` as a plain tree of arrays, whatever its structure."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )
        return restored["state"]

    def restore_matching(
        self, step: int, abstract_state: Any, data_iterator: Any | None, advice: str
    ) -> tuple[Any, dict]:
        """`restore`, with a checkpoint of another model turned into one ConfigError line.

        `advice`: what the user should do (e.g. "use a new --workdir")."""
        from avemo.config import ConfigError

        try:
            return self.restore(step, abstract_state, data_iterator)
        except ValueError as err:
            raise ConfigError(
                f"the checkpoint at step {step} in {self.directory} does not match this config "
                f"(model or optimizer changed?); {advice}. Orbax: {str(err).splitlines()[0]}"
            ) from err

    def restore_meta(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, the restore target Orbax expects."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
