"""Root conftest: on a machine without a CUDA GPU, run the Triton kernels under the interpreter.

``TRITON_INTERPRET=1`` must be set before anything imports triton (Triton reads it when the
``@triton.jit`` functions are defined), so it is set here, before the tests import the package.
Set ``STRUCTPRUNE_TEST_INTERPRET=0`` to test the plain torch path on CPU instead.
"""

import os
import sys

import torch

if not torch.cuda.is_available() and os.environ.get("STRUCTPRUNE_TEST_INTERPRET", "1") != "0":
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before conftest could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"
