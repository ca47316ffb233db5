"""ViT variant names ("S/16", "Ti/16", "Te/8", ...) decoded into dimensions."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ViTDims:
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


# name -> (width, depth, mlp_dim, num_heads). "Te" is the testing variant: twelve layers, so
# every layer number of the SkipViT paper means the same thing, at a width a CPU trains fast.
# "Tw" is its wider sibling, the model of configs/fashion_mnist.py:long (its results:
# docs/results.md, "Fashion-MNIST, longer recipe").
_SIZES = {
    "Te": (32, 12, 128, 2),
    "Tw": (40, 12, 160, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}


def decode_variant(variant: str) -> ViTDims:
  """"S/16" -> ViTDims(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16)."""
  size, sep, patch = variant.partition("/")
  if size not in _SIZES or not sep or not patch.isdigit() or int(patch) < 1:
    raise ValueError(
        f"variant: expected '<size>/<patch>' with size in {sorted(_SIZES)} and a positive "
        f"patch size (e.g. 'S/16'), got {variant!r}"
    )
  width, depth, mlp_dim, num_heads = _SIZES[size]
  return ViTDims(width, depth, mlp_dim, num_heads, int(patch))


def conv_stem_channels(width: int, patch_size: int) -> tuple[int, ...]:
  """Output channels of the convolutional stem's log2(p) stride-2 convolutions, doubling up to
  the width (Xiao et al. 2021): (20, 40) for width 40 and 4 px patches."""
  if patch_size < 2 or patch_size & (patch_size - 1):
    raise ValueError(f"stem: 'conv' needs a patch size that is a power of 2 (2, 4, 8, 16, ...), "
                     f"got {patch_size}")
  num_convs = patch_size.bit_length() - 1
  return tuple(width // 2 ** (num_convs - 1 - i) for i in range(num_convs))
