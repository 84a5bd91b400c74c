"""The multi-process test's steps: N steps of the tiny stage-2 step on fixed global batches.

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES LOCAL_DEVICES PORT OUT.npz

Each process feeds its own rows of every global batch; process 0 writes the losses and the final parameters.
`run_steps` is also called in-process by the test, for the one-process reference on 4 of its devices.
"""
import os
import sys

STEPS, GLOBAL_BATCH = 3, 16


def run_steps(devices, process_id: int = 0, num_processes: int = 1) -> dict:
    """{'losses', 'queue', 'param:<path>'} after STEPS steps on a mesh of `devices` (numpy, process 0's copy)."""
    import jax
    import numpy as np
    from flax import traverse_util

    from tests.train_util import fresh_state, load_config, synthetic_batch
    from uamix_jax.sharding import data_mesh, global_batch, replicate, shard_step
    from uamix_jax.train.optim import trainable_mask
    from uamix_jax.train.tune import tune_options
    from uamix_jax.train.tune_step import make_tune_step

    config = load_config("test", "stage2")
    config.optim.eps = 1e-3  # see test_sharded_step_equals_single_device_and_traces_once
    encoder, head, state, labels = fresh_state(config)
    mesh = data_mesh(devices)
    step = shard_step(make_tune_step(encoder, head, tune_options(config, config.mix.group), trainable_mask(labels)),
                      mesh)
    state = replicate(state, mesh)
    rows = GLOBAL_BATCH // num_processes
    losses = []
    for i in range(STEPS):
        full = synthetic_batch(GLOBAL_BATCH, config.data.clip_seconds, i)
        local = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in full.items()}
        state, metrics = step(state, global_batch(local, mesh), jax.random.key(3))
        losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))

    def host(x):
        return np.asarray(x.addressable_data(0))

    flat = {"/".join(k): host(v) for k, v in traverse_util.flatten_dict(state.params).items()}
    return {"losses": np.asarray(losses), "queue": host(state.queue), **{f"param:{k}": v for k, v in flat.items()}}


if __name__ == "__main__":
    process_id, num_processes, local_devices, port, out = (
        int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax
    import numpy as np

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    assert jax.device_count() == 4, jax.devices()
    result = run_steps(jax.devices(), process_id, num_processes)
    if process_id == 0:
        np.savez(out, **result)
    print(f"process {process_id}: losses {result['losses'].tolist()}", flush=True)
    if num_processes > 1:
        jax.distributed.shutdown()
