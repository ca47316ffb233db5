"""`import kernels` must load this repository's kernels/, not the unrelated `kernels`
distribution on PyPI that shares the top-level name."""

import importlib.metadata
from pathlib import Path

import kernels
from kernels import gather_attention

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_kernels_resolves_to_this_repository():
  assert Path(kernels.__file__).resolve().parent == REPO_ROOT / "kernels"
  assert Path(gather_attention.__file__).resolve() == REPO_ROOT / "kernels" / "gather_attention.py"


def test_gather_attention_exposes_the_public_api():
  for name in ("gather_attention", "gather_attention_reference", "can_lower"):
    assert callable(getattr(gather_attention, name)), name


def test_no_other_distribution_provides_kernels():
  # Empty when the project runs from a checkout without being installed.
  owners = set(importlib.metadata.packages_distributions().get("kernels", []))
  assert owners <= {"skipvit_jax"}, f"`kernels` is also installed by {owners - {'skipvit_jax'}}"
