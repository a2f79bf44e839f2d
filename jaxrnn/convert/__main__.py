"""`python -m jaxrnn.convert SRC DST [--prefix P]`: a torch checkpoint to Flax params."""

from __future__ import annotations

import argparse

import flax.serialization
import jax.numpy as jnp

from ._torch import read_params

FORMATS = (".safetensors", ".msgpack")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrnn.convert",
        description="Convert a torch recurrent layer's checkpoint into Flax params "
        "(torch's key names) and print the configuration inferred from the weights.",
    )
    parser.add_argument("src", help="a .pt/.pth/.bin (read with weights_only=True) or .safetensors file")
    parser.add_argument("dst", help=f"output file: {' or '.join(FORMATS)}")
    parser.add_argument("--prefix", default="", help="the submodule's key prefix, e.g. 'encoder.lstm.'")
    parser.add_argument("--kind", choices=("rnn", "lstm", "gru"), help="default: from the gate count")
    parser.add_argument("--nonlinearity", choices=("tanh", "relu"), default="tanh", help="for RNNs")
    args = parser.parse_args(argv)
    if not args.dst.endswith(FORMATS):
        parser.error(f"dst must end with {' or '.join(FORMATS)}, got {args.dst!r}")
    spec, params = read_params(args.src, prefix=args.prefix, kind=args.kind, nonlinearity=args.nonlinearity)
    if args.dst.endswith(".safetensors"):
        from safetensors.flax import save_file

        save_file({k: jnp.asarray(v) for k, v in params.items()}, args.dst)
    else:
        with open(args.dst, "wb") as file:
            file.write(flax.serialization.msgpack_serialize({"params": params}))
    print(f"jaxrnn.{spec.describe()}")
    print(f"wrote {len(params)} arrays to {args.dst}")


if __name__ == "__main__":
    main()
