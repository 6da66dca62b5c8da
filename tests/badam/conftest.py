"""One intra-op thread for these tiny models: with other test processes on 2 cores, two threads contend and make
each tiny forward/backward several times slower."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
