"""The trained digits CNN as a torch factory module, for the torch-source CLI tests.

Shared by test_distill.py (the CNN is the teacher) and test_retrain_cli.py (the CNN is
retrained). torch is imported inside the functions: importing this module needs none.
"""

from __future__ import annotations

import collections.abc
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelpress.cli.main import app

# The factory module: a function returning the trained digits CNN, then the test's own factories.
_FACTORIES = '''
"""{docstring}"""
import torch
from torch import nn

from modelpress.examples.digits import build_digits_cnn


def {function}():
    module = build_digits_cnn()
    module.load_state_dict(torch.load({weights!r}, weights_only=True))
    return module.eval()
'''


def run(*args: object):
    """``modelpress ARGS`` in-process (each argument as its ``str``)."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread, as test_finetune.py: on a busy 2-core machine torch's spinning worker
    threads make these tiny trainings up to 20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def trained_digits(
    tmp_path_factory, prefix: str, factory: str, docstring: str, function: str, extra: str, onnx: str
) -> collections.abc.Iterator[tuple[Path, object]]:
    """``(root, split)`` while ``factory`` is importable: the digits CNN trained (seed 0) and saved,
    ``root/{factory}.py`` (``function`` returns the CNN, then the ``extra`` source), the training
    data ``train/digits.npz`` (``image``, ``labels``), ``x_test.npy``, and the CNN converted to
    ``root/{onnx}`` with input ``image=1x1x8x8``."""
    import torch

    from modelpress.examples.digits import load_digits_split, train_digits_cnn

    root = tmp_path_factory.mktemp(prefix)
    split = load_digits_split()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(train_digits_cnn(split).state_dict(), root / "digits.pt")
    source = _FACTORIES.format(docstring=docstring, function=function, weights=str(root / "digits.pt"))
    (root / f"{factory}.py").write_text(source + extra)
    (root / "train").mkdir()
    np.savez(root / "train" / "digits.npz", image=split.x_train, labels=split.y_train)
    np.save(root / "x_test.npy", split.x_test)
    with pytest.MonkeyPatch.context() as patch:  # the factory module importable for the whole file
        patch.syspath_prepend(str(root))
        result = run("convert", f"{factory}:{function}", "-o", root / onnx, "-i", "image=1x1x8x8")
        assert result.exit_code == 0, result.output
        yield root, split
    sys.modules.pop(factory, None)
