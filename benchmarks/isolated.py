"""A jaxrnn implementation timed in a process of its own, started by `peers.IsolatedRunner`.

`implementation="onednn"` runs on OpenMP, as torch does, and the two share one OpenMP runtime in
a process: with torch's threads counted against the cores, OpenMP stops spinning at barriers
and both slow down by 2-3x. A user runs one or the other; so does this process (torch is
imported here, with the harness, but never runs, so it has no OpenMP threads).
"""

from __future__ import annotations


def serve(connection, state_dict, nonlinearity, x, lengths, backward, implementation, dtype) -> None:
    """Build and compile the layer (computing in `dtype`, from float32 weights and `x`), say
    "ready", then run it once per "run" received and answer with the seconds the call took."""
    import time

    import jax.numpy as jnp
    from peers import jaxrnn_model_runner

    from jaxrnn.convert import module_from_torch

    layer = module_from_torch(state_dict, nonlinearity=nonlinearity, implementation=implementation, dtype=dtype)
    # On the device once, as every other peer's input: a numpy `x` is copied in at every call.
    run = jaxrnn_model_runner(*layer, jnp.asarray(x, dtype), lengths, backward)
    run()
    connection.send("ready")
    while connection.recv() == "run":
        start = time.perf_counter()
        run()
        connection.send(time.perf_counter() - start)
