"""The program a run executes, built from its config in this one place.

The trainer, the compile-only check (`aot/`), evaluation and the benchmarks
all call `build_program`, so what is checked ahead of time for a TPU topology
is the step a run compiles (tests/test_program.py compares the two).
"""

from typing import NamedTuple, Sequence

import jax
import optax

from sharding import rules
from sharding.mesh import make_mesh
from trainer.config import Config, NonFinite, SpikeAction
from trainer.optimizer import make_optimizer
from trainer.state import ShardedSetup, init_state, plan_state
from trainer.train_step import TrainStep


class Program(NamedTuple):
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation
  setup: ShardedSetup  # the state's structure, shapes and shardings
  train_step: TrainStep

  def init_state(self, config: Config):
    """A fresh state in its shards, from `run.seed`."""
    return init_state(config.model, self.optimizer, self.setup, config.run.seed)

  def abstract_state(self):
    """The state as sharded ShapeDtypeStructs (for lowering without one)."""
    return rules.with_shardings(self.setup.abstract, self.setup.shardings)


def build_program(config: Config, devices: Sequence[jax.Device] | None = None) -> Program:
  """Mesh (over `devices`, default all), optimizer, state plan and train step
  of `config`. Raises ValueError before any compile for a mesh that does not
  fit the devices, a batch that does not split over it, or a parameter that
  does not divide over its axes."""
  mesh = make_mesh(config.mesh, devices)
  rules.check_batch_divisible(config.data.global_batch_size, mesh.shape,
                              config.optimizer.grad_accum_steps)
  optimizer = make_optimizer(config.optimizer, config.run.steps)
  setup = plan_state(config.model, optimizer, mesh)
  train_step = TrainStep(setup, optimizer, mesh, config.optimizer.z_loss,
                         config.optimizer.grad_accum_steps,
                         skip_non_finite=config.run.on_non_finite == NonFinite.SKIP,
                         spike_limits=(config.run.spike_factor > 0
                                       and config.run.spike_action == SpikeAction.SKIP))
  return Program(mesh, optimizer, setup, train_step)
