"""The README's usage example runs as written (a user copies it first)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    y, attention = namespace["y"], namespace["attention"]
    assert y.shape == (100, 32, 128)
    assert len(attention) == 1 and attention[0].indices.shape == (100, 32, 5)
    assert namespace["sab"].weight_ih_l0.grad is not None
