"""Data-parallel training steps of a jaxrnn LSTM over a device mesh with `jax.sharding`.

The batch axis is sharded over every device, the parameters are replicated; `jit` inserts the
gradient all-reduce. The same script runs on simulated CPU devices and, unchanged, on real
accelerators; it checks that the sharded steps give the single-device results.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/multi_device.py
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxrnn


def make_step(model, optimizer):
    def step(variables, opt_state, x, lengths, target):
        def loss_fn(variables):
            output, _ = model.apply(variables, x, seq_lengths=lengths)
            return jnp.mean((output - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(variables)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(variables, updates), opt_state, loss

    return step


def main(steps: int = 5, batch_per_device: int = 4) -> dict:
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    batch = batch_per_device * len(devices)
    model = jaxrnn.LSTM(8, 32, num_layers=2, batch_first=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 20, 8)).astype(np.float32)
    lengths = rng.integers(5, 21, batch).astype(np.int32)
    target = np.tanh(np.cumsum(x, axis=1))[..., :1].repeat(32, -1) * 0.5
    variables = model.init(jax.random.key(0), x[:1])
    optimizer = optax.adam(1e-2)
    step = make_step(model, optimizer)

    def run(shard: bool):
        params, opt_state = variables, optimizer.init(variables)
        data = (x, lengths, target)
        if shard:
            replicated = NamedSharding(mesh, P())
            params, opt_state = jax.device_put((params, opt_state), replicated)
            data = tuple(jax.device_put(a, NamedSharding(mesh, P("data"))) for a in data)
        jitted = jax.jit(step)
        losses = []
        for _ in range(steps):
            params, opt_state, loss = jitted(params, opt_state, *data)
            losses.append(float(loss))
        return params, losses, getattr(data[0], "sharding", None)

    single_params, single_losses, _ = run(shard=False)
    sharded_params, sharded_losses, sharding = run(shard=True)
    max_diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(single_params), jax.tree.leaves(sharded_params))
    )
    print(f"{len(devices)} devices, batch {batch} sharded as {sharding.spec}")
    print(f"losses single  {np.round(single_losses, 5).tolist()}")
    print(f"losses sharded {np.round(sharded_losses, 5).tolist()}")
    print(f"max |single - sharded| parameter after {steps} steps: {max_diff:.2e}")
    return {"devices": len(devices), "max_param_diff": max_diff,
            "max_loss_diff": float(np.abs(np.array(single_losses) - np.array(sharded_losses)).max()),
            "loss_decreased": sharded_losses[-1] < sharded_losses[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON last")
    args = parser.parse_args()
    result = main(args.steps)
    if args.json:
        print(json.dumps(result))
