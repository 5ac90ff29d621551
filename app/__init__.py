"""kilotask: sub-kilobyte fine-tuned tasks (intrinsic-dimension subspace fine-tuning), served."""

import os

# Large CPU tensors (D floats, rebuilt every step) on transparent huge pages: a fresh 90 MB
# buffer otherwise costs ~20k page faults, more than the arithmetic on it. torch reads this
# once, at its first allocation, so it must be set before torch is imported.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
