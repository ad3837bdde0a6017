"""The README's Python examples run as written, one namespace for the whole file, as a reader would paste them."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
# Blocks left out, by a phrase they hold: a GPU, or minutes of CPU (the spiking network, a training run, an aeon
# fit); their parts run in the spiking, training and estimator tests.
LEFT_OUT = (".cuda()", "SpikingLMUMemory(", "Trainer(model", "load_classification(")


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_examples_run():
    blocks = python_blocks()
    kept = [b for b in blocks if not any(phrase in b for phrase in LEFT_OUT)]
    # Each phrase leaves out exactly one block: a renamed phrase would skip nothing, a common one too much.
    assert len(blocks) >= 10 and [sum(phrase in b for b in blocks) for phrase in LEFT_OUT] == [1] * len(LEFT_OUT)
    torch.manual_seed(0)
    namespace: dict = {}
    for block in kept:
        exec(compile(block, str(README), "exec"), namespace)
    # The shapes the README's comments give.
    assert namespace["H"].shape == (1, 500, 8)
    assert namespace["logits"].shape == (8, 10)
    assert namespace["y_t"].shape == (32, 64)
