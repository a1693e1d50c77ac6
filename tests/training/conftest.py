"""Training tests run torch on one thread.

Their tiny models gain nothing from a second thread, and on a busy shared CPU two OpenMP threads that spin
at every barrier make each step several times slower (the real-model smoke test included). Distributed
workers use one thread each, as torchrun does by default.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
