"""Convert between torch recurrent layers (modules, state_dicts, checkpoint files) and jaxrnn.

`from_torch` reads, `to_torch` writes back bit for bit, `module_from_torch` also builds the
matching Linen module. `python -m jaxrnn.convert SRC DST [--prefix P]` converts a file.
Nothing here imports torch until a torch object or a torch file is handed to it.
"""

from ._files import read_checkpoint as read_checkpoint
from ._flax import from_flax_cell as from_flax_cell
from ._flax import to_flax_cell as to_flax_cell
from ._flax import to_nnx_cell as to_nnx_cell
from ._torch import from_torch as from_torch
from ._torch import module_for as module_for
from ._torch import module_from_torch as module_from_torch
from ._torch import read_params as read_params
from ._torch import to_torch as to_torch
