"""The fast checkpoint tier: frequent saves to host-local storage (a RAM disk
or local SSD), each host's shards copied to the next host, so that losing
any one host's local storage loses nothing. The gs:// tier (`Checkpointer`)
is written less often; `trainer/checkpoint.py` restores from whichever tier
holds the newer complete step.

Built from Orbax's peer-to-peer emergency checkpointing
(`orbax.checkpoint.experimental.emergency.p2p`): its `LocalCheckpointManager`
writes each process's own shards to its own directory, and its `P2PNode`
serves a directory's steps over TCP and fetches another host's. What Orbax's
own p2p `CheckpointManager` cannot do, and why this file exists: it copies
nothing when it saves; a lost host's shards come back only from another data
replica that holds the same shards, so a ZeRO-3 layout (every parameter
sharded over every chip, no replica) loses the local tier with any one host.
Here process i copies process i-1's step right after that step is written
(the ring of `_predecessor`/`_successor`), whatever the mesh.

Every process has, under `<local_dir>/process_<i>/`:
  own/<step>   its shards (Orbax's local layout, `ocdbt.process_<i>`) and the
               step's JSON (data position, counters, checksums, config) as
               Orbax custom metadata;
  peer/<step>  a copy of process i-1's own/<step>.
"""

import dataclasses
import shutil
import threading
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.experimental.emergency import path as emergency_path
from orbax.checkpoint.experimental.emergency.p2p import constants as p2p_constants
from orbax.checkpoint.experimental.emergency.p2p import local as p2p_local
from orbax.checkpoint.experimental.emergency.p2p import options as p2p_options
from orbax.checkpoint.experimental.emergency.p2p import service as p2p_service
from orbax.checkpoint.experimental.emergency.p2p import utils as p2p_utils
from orbax.checkpoint.experimental.emergency.p2p.args import Composite

from common.log_filters import DropLines

# How long a process waits for its predecessor's step to appear before it
# gives up copying it (that step then has one copy only; it still counts).
_COPY_WAIT_S = 120.0


# The two errors Orbax's p2p service logs, one on each host, when a step is
# asked for before its host has saved it. The copy thread asks until it has
# (and logs its own error if it never does): they are the normal wait, not a
# fault, and a user would read hundreds of them.
_UNSAVED_STEP_ERRORS = DropLines("Failed to get manifest from peer",
                                 "Step directory not found for step=",
                                 source=p2p_service.__file__)


class LocalTierError(OSError):
  """A local step that some process can neither read nor fetch back."""


@dataclasses.dataclass(frozen=True)
class Holdings:
  """Which local steps the processes hold: own[i] and peer[i] are the steps
  of process i's own/ and peer/ directories (peer/ holds process i-1's)."""

  own: list[list[int]]
  peer: list[list[int]]

  def complete(self) -> list[int]:
    """Steps every process can restore: from its own copy or its successor's."""
    count = len(self.own)
    steps = set().union(*self.own, *self.peer)
    return sorted(s for s in steps if all(
        s in self.own[i] or s in self.peer[(i + 1) % count] for i in range(count)))


class LocalTier:
  """Saves and restores one process's shards under `<root>/process_<i>`."""

  def __init__(self, root: str, mesh: jax.sharding.Mesh, max_to_keep: int):
    self.index, self.count = jax.process_index(), jax.process_count()
    self.directory = epath.Path(root) / f"process_{self.index}"
    self._own_dir, self._peer_dir = self.directory / "own", self.directory / "peer"
    for path in (self._own_dir, self._peer_dir):
      path.mkdir(parents=True, exist_ok=True)
    self.max_to_keep = max_to_keep
    # Every save is forced: the trainer decides when (save_decision_policy unused).
    options = p2p_options.CheckpointManagerOptions(
        local=p2p_options.LocalCheckpointOptions(save_interval_steps=1,
                                                 max_to_keep=max_to_keep))
    self.own = p2p_local.LocalCheckpointManager(self._own_dir, mesh, options=options)
    self._own_node = p2p_service.P2PNode(self._own_dir)
    self._peer_node = p2p_service.P2PNode(self._peer_dir)
    self._own_node.start()
    self._peer_node.start()
    logging.get_absl_logger().addFilter(_UNSAVED_STEP_ERRORS)  # once: the same object
    # Every process learns every other's two addresses (a collective).
    nodes = emergency_path.sync_global_data({
        "ip": self._own_node.ip, "own_port": self._own_node.port,
        "peer_port": self._peer_node.port})
    self._predecessor = nodes[(self.index - 1) % self.count]
    self._successor = nodes[(self.index + 1) % self.count]
    self._copy = None  # the thread copying the predecessor's newest step
    self._pending = None  # the step of a save not yet finished
    self.fetched_back = []  # the processes whose shards the last restore fetched back

  # --- saving ---

  def save(self, step: int, state, meta: dict):
    """Starts an async save of this process's shards of `state` with the
    JSON `meta`, and, in the background, the copy of process i-1's same step
    (fetched once its save has committed on its host)."""
    self.wait()
    self.own.save(step, args=Composite(state=ocp.args.PyTreeSave(state)), force=True,
                  custom_metadata=meta)
    self._pending = step
    if self.count > 1:
      self._copy = threading.Thread(target=self._copy_predecessor, args=(step,), daemon=True)
      self._copy.start()

  def wait(self):
    """Finishes the last save (its commit on this host) and the last copy."""
    if self._pending is not None:
      self.own.wait_until_finished()
      self._pending = None
    self._join_copy()

  def _copy_predecessor(self, step: int):
    """Fetches process i-1's own/<step> into peer/<step>, then keeps the
    newest `max_to_keep` peer steps. Failures are logged, never raised: the
    step stays restorable from the predecessor's own copy."""
    source = (self.index - 1) % self.count
    deadline, pause = time.monotonic() + _COPY_WAIT_S, 0.5
    while time.monotonic() < deadline:
      if self._peer_node.fetch_shard_from_peer(
          self._predecessor["ip"], self._predecessor["own_port"], step, source):
        fetched = self._peer_dir / p2p_constants.P2P_RESTORE_DIR_NAME / str(step)
        target = self._peer_dir / str(step)
        if target.exists():
          shutil.rmtree(target)
        fetched.rename(target)
        for old in sorted(self.peer_steps())[:-self.max_to_keep]:
          shutil.rmtree(self._peer_dir / str(old), ignore_errors=True)
        return
      # Its save has not committed yet. Each try that finds no step logs
      # Orbax's errors, so the tries thin out.
      time.sleep(pause)
      pause = min(2 * pause, 8.0)
    logging.error("local tier: process %d's step %d was not copied from %s within %s s",
                  source, step, self._predecessor["ip"], _COPY_WAIT_S)

  def _join_copy(self):
    if self._copy is not None:
      self._copy.join()
      self._copy = None

  # --- what is held ---

  def peer_steps(self) -> list[int]:
    """Steps of the predecessor's shards held in peer/."""
    source = (self.index - 1) % self.count
    return sorted(int(p.name) for p in self._peer_dir.iterdir() if p.name.isdigit()
                  and p2p_utils.detect_process_index(self._peer_dir, int(p.name)) == source)

  def holdings(self) -> Holdings:
    """What every process holds (a collective: all processes call it)."""
    self._join_copy()
    mine = {"own": list(self.own.all_steps()), "peer": self.peer_steps()}
    everyone = emergency_path.sync_global_data(mine)
    return Holdings(own=[h["own"] for h in everyone], peer=[h["peer"] for h in everyone])

  # --- restoring ---

  def restore(self, step: int, abstract_state) -> tuple[object, dict]:
    """(state, meta) of `step`, which `holdings().complete()` listed; a
    process without its own copy first fetches it back from its successor."""
    mine = step in self.own.all_steps()
    fetched = mine or self._fetch_back(step)
    everyone = emergency_path.sync_global_data(
        {"index": self.index, "mine": mine, "ok": bool(fetched)})
    self.fetched_back = [h["index"] for h in everyone if h["ok"] and not h["mine"]]
    failed = [h["index"] for h in everyone if not h["ok"]]
    if failed:  # every process raises, so all of them turn to the gs:// tier
      raise LocalTierError(f"local step {step} of processes {failed} could not be "
                           "fetched back from their copies on the next host")
    restored = self.own.restore(step, args=Composite(
        state=ocp.args.PyTreeRestore(item=abstract_state)))
    meta = self.own.metadata(step).custom_metadata
    return restored["state"], dict(meta)

  def discard_after(self, step: int):
    """Deletes this process's local steps newer than `step`, the one the run
    goes on from: they belong to steps it trains again (saved by only some
    processes, copied too late, or rolled back), and Orbax would refuse to
    save those steps a second time."""
    self.wait()
    stale = [s for s in self.own.all_steps() if s > step]
    for s in stale:
      shutil.rmtree(self._own_dir / str(s))
    for s in self.peer_steps():
      if s > step:
        shutil.rmtree(self._peer_dir / str(s))
    if stale:
      self.own.reload()

  def _fetch_back(self, step: int) -> bool:
    """Copies this process's shards of `step` back from its successor's peer/."""
    if not self._own_node.fetch_shard_from_peer(
        self._successor["ip"], self._successor["peer_port"], step, self.index):
      return False
    fetched = self._own_dir / p2p_constants.P2P_RESTORE_DIR_NAME / str(step)
    fetched.rename(self._own_dir / str(step))
    self.own.reload()
    return True

  def close(self):
    """Finishes the last save and its copy; every process calls it (each
    keeps serving its steps until all copies are done)."""
    self.wait()
    if self.count > 1:
      try:  # with a timeout: a process that died never arrives
        ocp.multihost.get_barrier_sync_fn()(key="griffin_local_tier_closed",
                                            timeout_ms=int(_COPY_WAIT_S * 1000))
      except Exception as e:  # noqa: BLE001 - closing goes on; that copy is missing
        logging.warning("local tier: not every process finished its copy: %s", e)
    self.own.close()
    self._own_node.stop()
    self._peer_node.stop()
