"""Data parallelism over a 1-D device mesh with JAX's own machinery.

Layout: one mesh axis, `data`. Every per-sequence array (the training, validation
and test sets, the embedding table and its per-row optimizer state, any per-row buffer a
method keeps) is sharded along its leading (sequence) axis with
`NamedSharding(mesh, P("data"))`: with D devices, device d holds the contiguous
rows `[d·N/D, (d+1)·N/D)`. Cell and readout parameters and their optimizer
state are replicated; XLA reduces their gradients across the axis.

Minibatches never move table rows between devices. Sampling is *stratified*:
the training rows are cut into `S` contiguous strata (`train.sample_strata`,
default: the device count) and every step draws `B/S` rows from each stratum's
own per-epoch permutation. With D dividing S, each device's strata are its own
rows, so `take_rows`/`put_rows` run as a `shard_map` of a local gather/scatter:
no all-to-all, no all-gather of the table. Because the batch depends on S and not
on D, a spec with a fixed `sample_strata` gives the same batches, and so the same
losses up to float reordering, on any device count that divides it.

Multi-host: `maybe_initialize_distributed()` calls `jax.distributed.initialize()`
when a cluster launcher's environment is present; global arrays are assembled
from each process's local rows with `jax.make_array_from_callback`, and only
process 0 writes results.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


class LaunchEnvError(ValueError):
    """A cluster launcher's environment variable that is not a number; the message names it (the CLI exits 2)."""


def env_int(name: str, default: int | None = None) -> int:
    """The whole number in environment variable `name` (`default` when unset); LaunchEnvError otherwise."""
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        raise LaunchEnvError(
            f"environment variable {name}={raw!r}: expected a whole number (it is read to join a multi-process run); "
            f"fix it, or unset it to run as one process"
        ) from None


def maybe_initialize_distributed() -> bool:
    """Join a multi-process run when launched by a cluster launcher; True if distributed.

    Recognised: `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`),
    SLURM with more than one task (`SLURM_NTASKS` > 1), which JAX auto-detects, or a job of
    several tasks on submitit's local executor (`SUBMITIT_LOCAL_NTASKS` > 1: the tasks of
    one job on this machine, meeting at a port derived from the job id).
    `SEQPAR_HEARTBEAT_TIMEOUT_S` (default 100, JAX's): after this many seconds without a
    heartbeat from a process (killed, its node lost), the others stop with an error
    instead of waiting in a collective forever. On CPU the processes talk through gloo
    unless `JAX_CPU_COLLECTIVES_IMPLEMENTATION` says otherwise. A variable among these that
    should be a number and is not is a `LaunchEnvError` naming it.
    """
    env = os.environ
    if not launched_multiprocess():
        return False
    if not env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes; GPUs use NCCL
    heartbeat = env_int("SEQPAR_HEARTBEAT_TIMEOUT_S", 100)
    if env.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=env_int("JAX_NUM_PROCESSES") if "JAX_NUM_PROCESSES" in env else None,
            process_id=env_int("JAX_PROCESS_ID") if "JAX_PROCESS_ID" in env else None,
            heartbeat_timeout_seconds=heartbeat,
        )
        return True
    if env_int("SUBMITIT_LOCAL_NTASKS", 1) > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{20000 + env_int('SUBMITIT_LOCAL_JOB_ID') % 20000}",
            num_processes=env_int("SUBMITIT_LOCAL_NTASKS"),
            process_id=env_int("SUBMITIT_LOCAL_GLOBALID"),
            heartbeat_timeout_seconds=heartbeat,
        )
        return True
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)  # SLURM: JAX reads the rest from its environment
    return True


def launched_multiprocess() -> bool:
    """True when a cluster launcher started this process as one of several (see above)."""
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or any(env_int(k, 1) > 1 for k in ("SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS"))


def is_writer() -> bool:
    """Only process 0 writes results."""
    return jax.process_index() == 0


def make_mesh(devices: int | str) -> Mesh:
    """A 1-D mesh over `devices` devices (`"all"`: every device of every process)."""
    available = jax.devices()
    n = len(available) if devices == "all" else int(devices)
    if n > len(available):
        raise ValueError(f"train.devices={n} but only {len(available)} device(s) are visible")
    return Mesh(np.asarray(available[:n]), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def resolve(devices: int | str, strata: int | None, n_train: int, n_held_out: tuple[int, int], batch: int) -> tuple[Mesh, int]:
    """The mesh and the number of sampling strata of a spec (`devices: all` is checked here).

    `n_held_out` is (validation, test) sequences: both are row-sharded too."""
    mesh = make_mesh(devices)
    d = mesh.shape[AXIS]
    s = strata or d
    for key, n in (("task.train_sequences", n_train), ("train.batch_size", batch)):
        if n % s:
            raise ValueError(f"train.sample_strata={s} must divide {key}={n}")
    n_val, n_test = n_held_out
    if s % d or n_val % d or n_test % d:
        raise ValueError(
            f"train.devices={d} must divide train.sample_strata={s}, task.val_sequences={n_val} and task.test_sequences={n_test}"
        )
    return mesh, s


def state_shardings(state_shape: Any, row_keys: tuple[str, ...], mesh: Mesh) -> Any:
    """Shardings for a method state: top-level entries in `row_keys` by rows, the rest replicated."""

    def for_entry(key, subtree):
        if key in row_keys:
            return jax.tree.map(lambda a: NamedSharding(mesh, rows_spec(len(a.shape))), subtree)
        return jax.tree.map(lambda a: NamedSharding(mesh, P()), subtree)

    return {k: for_entry(k, v) for k, v in state_shape.items()}


def rows_spec(ndim: int) -> P:
    return P(AXIS, *([None] * (ndim - 1)))


def shard_rows(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf sharded along its leading axis (built from each process's local rows)."""

    def place(a):
        a = np.asarray(a)
        sharding = NamedSharding(mesh, rows_spec(a.ndim))
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(place, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda index: np.asarray(a)[index]), tree)


def stratified_batch_indices(key: jax.Array, step: jax.Array, n: int, b: int, strata: int) -> jax.Array:
    """Global row indices of minibatch `step`, laid out stratum by stratum.

    Stratum s owns rows `[s·n/S, (s+1)·n/S)`; each epoch it draws a fresh permutation
    of its rows (key folded with epoch and stratum) and contributes `b/S` rows per
    step. With `b == n` the batch is every row in order.
    """
    if b == n:
        return jnp.arange(n)
    n_loc, b_loc = n // strata, b // strata
    per_epoch = n_loc // b_loc
    epoch, pos = step // per_epoch, step % per_epoch
    parts = []
    for s in range(strata):  # static: the number of strata is part of the spec
        perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, epoch), s), n_loc)
        parts.append(s * n_loc + jax.lax.dynamic_slice(perm, (pos * b_loc,), (b_loc,)))
    return jnp.concatenate(parts)


def _row_parallel() -> bool:
    """True when tracing under a mesh whose `data` axis spans more than one device."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and AXIS in mesh.axis_names and mesh.shape[AXIS] > 1


def take_rows(tree: Any, idx: jax.Array | None) -> Any:
    """`leaf[idx]` for every leaf; a local gather on each device under a data-parallel mesh.

    `idx=None` means every row in order (a full batch): nothing to gather.
    """
    if idx is None or not jax.tree.leaves(tree):  # a stateless optimizer's state (sgd): no rows at all
        return tree
    if not _row_parallel():
        return jax.tree.map(lambda a: a[idx], tree)

    def local(t, i):
        offset = jax.lax.axis_index(AXIS) * jax.tree.leaves(t)[0].shape[0]
        return jax.tree.map(lambda a: a[i - offset], t)

    return jax.shard_map(local, in_specs=(P(AXIS), P(AXIS)), out_specs=P(AXIS))(tree, idx)


def put_rows(tree: Any, idx: jax.Array | None, rows: Any) -> Any:
    """`leaf.at[idx].set(rows)` for every leaf; a local scatter on each device under a mesh
    (`idx=None`: the rows are the whole of every leaf)."""
    if idx is None or not jax.tree.leaves(tree):
        return rows
    if not _row_parallel():
        return jax.tree.map(lambda a, r: a.at[idx].set(r), tree, rows)

    def local(t, i, r):
        offset = jax.lax.axis_index(AXIS) * jax.tree.leaves(t)[0].shape[0]
        return jax.tree.map(lambda a, v: a.at[i - offset].set(v), t, r)

    return jax.shard_map(local, in_specs=(P(AXIS), P(AXIS), P(AXIS)), out_specs=P(AXIS))(tree, idx, rows)


def per_device_bytes(tree: Any) -> dict[str, int]:
    """Bytes of `tree` held on each device (by device string)."""
    out: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", []):
            out[str(shard.device)] = out.get(str(shard.device), 0) + shard.data.nbytes
    return out
