"""A jaxrnn implementation timed in a process of its own, started by `peers.isolated_runner`.

`implementation="onednn"` runs on OpenMP, as torch does, and the two share one OpenMP runtime in
a process: with torch's threads counted against the cores, OpenMP stops spinning at barriers
and both slow down by 2-3x. A user runs one or the other; so does this process (no torch here).
"""

from __future__ import annotations


def serve(connection, state_dict, nonlinearity, x, backward, implementation) -> None:
    """Build and compile the layer, say "ready", then run it once per "run" received."""
    import jax
    import jax.numpy as jnp

    from jaxrnn.convert import module_from_torch

    model, variables = module_from_torch(state_dict, nonlinearity=nonlinearity, implementation=implementation)
    x = jnp.asarray(x)
    if backward:
        fn = jax.jit(jax.grad(lambda v, x: model.apply(v, x)[0].sum(), argnums=(0, 1)))
    else:
        fn = jax.jit(lambda v, x: model.apply(v, x)[0])
    jax.block_until_ready(fn(variables, x))
    connection.send("ready")
    while connection.recv() == "run":
        jax.block_until_ready(fn(variables, x))
        connection.send("done")
