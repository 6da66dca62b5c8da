"""Fixtures for the whole suite.

One intra-op thread per test: the suite runs on pytest-xdist workers sharing 2 cores, and the tiny models it trains run
fastest, and far more predictably, on one thread (measured here: a tiny forward+backward took 1.5 s with 2 threads
under load, 0.04 s with one)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
