import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run through the device tool (make gpu-test)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh():
    """A clean graphmfu registry and Dynamo cache for backend tests."""
    import graphmfu

    torch._dynamo.reset()
    graphmfu.reset()
    yield graphmfu
    graphmfu.reset()
    torch._dynamo.reset()
