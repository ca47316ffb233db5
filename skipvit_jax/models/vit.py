"""Vision Transformer (Flax linen) with token routing: SkipViT, ToMe, PatchDropout, ToE.

Architecture and parameter names follow google-research/vision_transformer (and big_vision's
initialisation), so dense ViT checkpoints map onto this tree one to one:

  embedding/{kernel,bias}              patch embedding, a (p, p, 3, C) convolution
  cls                                  (1, 1, C) [CLS] token
  Transformer/posembed_input/pos_embedding   (1, 1 + P, C)
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
                               LayerNorm_2, MlpBlock_3/{Dense_0,Dense_1}
  Transformer/encoder_norm
  head                                 (C, num_classes), zero-initialised

Routing is part of the module's configuration (`routing=RoutingConfig(...)`, which also holds
ToMe's merging and PatchDropout); the forward pass only takes `train` and whether to capture
attention maps.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from skipvit_jax.models import attention, routing
from skipvit_jax.models import toe as toe_lib
from skipvit_jax.models import tome as tome_lib
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.variants import ViTDims, conv_stem_channels, decode_variant

Array = jax.Array


class _DenseParams(nn.Module):
  """A DenseGeneral-shaped kernel and bias (flax names), readable by the parent module."""

  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  kernel_init: Callable

  def setup(self):
    self.kernel = self.param("kernel", self.kernel_init, self.kernel_shape)
    self.bias = self.param("bias", nn.initializers.zeros, self.bias_shape)


class MultiHeadAttention(nn.Module):
  """Self-attention with query/key/value/out parameters laid out as flax's DenseGeneral."""

  width: int
  num_heads: int
  implementation: str = "xla"
  dtype: Any = jnp.float32

  def setup(self):
    heads, head_dim = self.num_heads, self.width // self.num_heads
    qkv_init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    qkv_shapes = ((self.width, heads, head_dim), (heads, head_dim))
    self.query = _DenseParams(*qkv_shapes, qkv_init)
    self.key = _DenseParams(*qkv_shapes, qkv_init)
    self.value = _DenseParams(*qkv_shapes, qkv_init)
    out_init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
    self.out = _DenseParams((heads, head_dim, self.width), (self.width,), out_init)

  def __call__(
      self, h: Array, *, with_cls_scores: bool = False, with_probs: bool = False,
      key_bias: Array | None = None, with_key_mean: bool = False,
  ) -> attention.AttentionResult:
    """h: (B, N, C) normalised tokens -> AttentionResult with out: (B, N, C).

    key_bias: (B, N) added to every key's logits (ToMe's proportional attention), or None.
    with_key_mean: also return the keys averaged over heads, (B, N, D) (ToMe's metric)."""
    # One (C, 3C) matmul instead of three (C, C) ones.
    kernel = jnp.stack([self.query.kernel, self.key.kernel, self.value.kernel], axis=1)
    bias = jnp.stack([self.query.bias, self.key.bias, self.value.bias], axis=0)
    qkv = jnp.einsum("bnc,cthd->tbnhd", h, kernel.astype(self.dtype))
    q, k, v = qkv + bias.astype(self.dtype)[:, None, None]
    result = attention.attend(
        q, k, v, implementation=self.implementation,
        with_cls_scores=with_cls_scores, with_probs=with_probs, key_bias=key_bias,
    )
    out = jnp.einsum("bnhd,hdc->bnc", result.out, self.out.kernel.astype(self.dtype))
    return result._replace(out=out + self.out.bias.astype(self.dtype),
                           key_mean=k.mean(axis=2) if with_key_mean else None)

  def cls_scores(self, h: Array) -> Array:
    """The [CLS] row of this layer's attention over all tokens, without projecting keys.

    q_cls . (W_k h_j + b_k) = (W_k q_cls) . h_j + q_cls . b_k, and the last term is the same
    for every j, so it cancels in the softmax. This costs 2 C^2 + N C H multiply-adds instead
    of the N C^2 a key projection of every token would.

    Args:
      h: (B, N, C) normalised tokens, [CLS] first.

    Returns:
      (B, N - 1) float32, equal to `routing.cls_attention_scores(q, k)` for this layer.
    """
    head_dim = self.width // self.num_heads
    q_cls = jnp.einsum("bc,chd->bhd", h[:, 0], self.query.kernel.astype(self.dtype))
    q_cls = q_cls + self.query.bias.astype(self.dtype)
    key_of_query = jnp.einsum("bhd,chd->bhc", q_cls, self.key.kernel.astype(self.dtype))
    logits = jnp.einsum("bhc,bnc->bhn", key_of_query, h, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1)  # (B, H, N)
    return probs.mean(axis=1)[:, 1:]


# Compute dtypes by their config names (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The GELU each checkpoint family was trained with: vision_transformer and big_vision use
# flax's default, the tanh approximation; timm and DeiT use PyTorch's exact (erf) form.
GELUS = ("tanh", "exact")


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  gelu: str = "tanh"

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    dense = lambda features: nn.Dense(
        features, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
    )
    width = x.shape[-1]
    y = nn.gelu(dense(self.mlp_dim)(x), approximate=self.gelu == "tanh")
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = dense(width)(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm transformer block; at a drop layer it also splits the tokens, at a ToMe
  layer it merges them (after the attention residual, before the MLP)."""

  dims: ViTDims
  routing_config: RoutingConfig
  attention_implementation: str = "xla"
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  gelu: str = "tanh"

  @nn.compact
  def __call__(
      self, x: Array, train: bool, stage: routing.DropStage | None, capture_attention: bool,
      merge: int = 0, size: Array | None = None,
  ) -> tuple[Array, routing.Split | None, Array | None, Array | None,
             tome_lib.Matching | None]:
    """x: (B, n, C) -> (x_out: (B, n', C), split at this layer or None, probs or None,
    token sizes (B, n') or None, ToMe's matching at this layer or None).

    merge: ToMe's r at this layer (0: none). size: (B, n) float32 token sizes once an earlier
    layer merged (None before: every size is 1); with proportional attention their logs bias
    the attention logits. The arguments after x are positional so that `nn.remat` can take
    train, stage, capture_attention and merge as static."""
    # Stochastic depth: one Bernoulli draw per example, shared by all of its tokens.
    drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2))
    norm_attn = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")
    attn = MultiHeadAttention(
        self.dims.width, self.dims.num_heads, self.attention_implementation, self.dtype,
        name="MultiHeadDotProductAttention_1",
    )
    point = self.routing_config.drop_point
    by_attention = self.routing_config.score == "cls_attention"
    split = None
    if stage is not None and point == "block_input":
      scores = attn.cls_scores(norm_attn(x)) if by_attention else self._random_scores(x, stage)
      x, split = routing.route(x, scores, stage, self.routing_config)

    tome = self.routing_config.tome
    biased = size is not None and tome.proportional_attention
    result = attn(
        norm_attn(x),
        with_cls_scores=stage is not None and point == "after_attention" and by_attention,
        with_probs=capture_attention,
        key_bias=tome_lib.proportional_bias(size) if biased else None,
        with_key_mean=merge > 0,
    )
    y = nn.Dropout(self.dropout_rate)(result.out, deterministic=not train)
    x = x + drop_path(y, deterministic=not train)
    if stage is not None and point == "after_attention":
      scores = result.cls_scores if by_attention else self._random_scores(x, stage)
      x, split = routing.route(x, scores, stage, self.routing_config)
    matching = None
    if merge:
      # Similarities at HIGHEST precision: the decisions do not depend on the backend's
      # default matmul precision, for (ceil(n/2) floor(n/2) D) MACs, far below the block's.
      matching = tome_lib.bipartite_soft_matching(
          result.key_mean, merge, precision=jax.lax.Precision.HIGHEST)
      if size is None:
        size = jnp.ones(x.shape[:2], jnp.float32)
      x, size = tome_lib.merge_wavg(x, size, matching)

    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_2")(x)
    y = MlpBlock(self.dims.mlp_dim, self.dropout_rate, self.dtype, self.gelu,
                 name="MlpBlock_3")(y, train=train)
    x = x + drop_path(y, deterministic=not train)
    return x, split, result.probs, size, matching

  def _random_scores(self, x: Array, stage: routing.DropStage) -> Array:
    """(B, n) uniform scores for the n non-[CLS] tokens of x (RoutingConfig.score "random").

    Training passes the "routing" RNG stream (a function of seed and step); evaluation and
    inspection pass none and draw from a fixed key per layer."""
    key = self.make_rng("routing") if self.has_rng("routing") else jax.random.key(stage.layer)
    return routing.random_scores(key, x.shape[0], x.shape[1] - 1)


class AddPositionEmbs(nn.Module):
  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, N, C) -> x + learned (1, N, C) position embedding."""
    pos = self.param(
        "pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:]
    )
    return x + pos.astype(x.dtype)


class Encoder(nn.Module):
  """The transformer stack; owns the routing between layers (PatchDropout at the input;
  split, skip, restore; ToMe's sizes and merge groups)."""

  dims: ViTDims
  routing_config: RoutingConfig
  toe: toe_lib.ToEPlan | None = None
  attention_implementation: str = "xla"
  dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  gelu: str = "tanh"

  @nn.compact
  def __call__(self, x: Array, *, train: bool, capture_attention: bool) -> tuple[Array, dict]:
    """x: (B, 1 + P, C) embedded tokens -> (normalised tokens (B, 1 + P', C), aux)."""
    batch, num_patches = x.shape[0], x.shape[1] - 1
    config = self.routing_config
    # With ToE, drop layers (all after layer 1) rank and restore within ToE's sequence.
    plan = config.plan(self.dims.depth, _tokens_after_toe(num_patches, self.toe), train=train)

    x = AddPositionEmbs(name="posembed_input")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

    # Original patch position of every non-[CLS] token in the sequence (-1: fused token).
    positions = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
    aux: dict[str, Any] = {}
    if plan.num_input < plan.num_patches:  # PatchDropout (training only)
      x, positions = self._patch_dropout(x, plan.num_input)
      aux["patch_dropout"] = {"keep_idx": positions}
    merging = any(plan.merges)
    if merging:
      # ToMe's merge groups: the sequence index of the token each original patch is in
      # (-1: removed by PatchDropout); sizes stay None until the first merge.
      groups = jnp.full((batch, num_patches), -1, jnp.int32).at[
          jnp.arange(batch)[:, None], positions].set(
              jnp.arange(1, 1 + positions.shape[1], dtype=jnp.int32))
    size = None
    waiting: list[routing.Split] = []  # splits whose dropped tokens ride the skip connection
    positions_before_split = positions
    records, attention_maps, layer_positions = [], [], []
    # Rematerialised blocks keep only their inputs for the backward pass and recompute the
    # rest; train, stage, capture_attention and merge (arguments 2-5, self being 0) shape the
    # trace.
    block = nn.remat(EncoderBlock, static_argnums=(2, 3, 4, 5)) if self.remat else EncoderBlock
    for index in range(self.dims.depth):
      layer = index + 1
      if layer == 2 and self.toe is not None:
        x, out_index = toe_lib.expand_tokens(x, self.toe)
        positions = out_index[:, 1:] - 1
        aux["toe"] = {"out_index": out_index}
      if layer == config.return_layer:
        for split in reversed(waiting):  # undo the latest split first
          x = routing.restore_tokens(x, split.keep_idx, split.dropped, split.drop_idx)
        positions = positions_before_split
        waiting = []
      self.sow("intermediates", "layer_inputs", x)

      rate = self.stochastic_depth * index / max(self.dims.depth - 1, 1)
      stage = plan.stage_at(layer)
      seen = positions  # the tokens this layer's attention sees (unless it splits first)
      num_tokens = x.shape[1]
      x, split, probs, size, matching = block(
          self.dims, config, self.attention_implementation, self.dropout_rate, rate, self.dtype,
          self.gelu, name=f"encoderblock_{index}",
      )(x, train, stage, capture_attention, plan.merge_at(layer), size)
      attention_maps.append(probs)
      if matching is not None:
        new_slot = tome_lib.merged_index(matching, num_tokens)  # (B, n + 1)
        groups = jnp.where(
            groups >= 0, jnp.take_along_axis(new_slot, jnp.maximum(groups, 0), axis=1), -1)
        host = tome_lib.source_index(matching, num_tokens)[:, 1:]  # sequence index before
        with_cls = jnp.pad(positions, ((0, 0), (1, 0)), constant_values=-1)
        positions = jnp.take_along_axis(with_cls, host, axis=1)

      if split is not None:
        if not records:
          positions_before_split = positions
        records.append({
            "cls_scores": split.scores,
            "keep_idx": split.keep_idx,
            "drop_idx": split.drop_idx,
            "kept_positions": jnp.take_along_axis(positions, split.keep_idx, axis=1),
            "dropped_positions": jnp.take_along_axis(positions, split.drop_idx, axis=1),
        })
        self.sow("intermediates", "dropped_tokens", split.dropped)
        positions = records[-1]["kept_positions"]
        if config.mode == "fused":
          positions = jnp.pad(positions, ((0, 0), (0, 1)), constant_values=-1)
        if config.mode == "skip":
          waiting.append(split)
        if config.drop_point == "block_input":
          seen = positions
      layer_positions.append(seen)

    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)
    if merging:
      aux["tome"] = {"merge_groups": groups, "sizes": size}
    aux["routing"] = tuple(records)
    aux["token_positions"] = tuple(layer_positions)
    if capture_attention:
      aux["attention"] = tuple(attention_maps)
    return x, aux


  def _patch_dropout(self, x: Array, num_keep: int) -> tuple[Array, Array]:
    """PatchDropout: x (B, 1 + P, C) -> ([CLS] + a uniformly random `num_keep` patches in
    ascending position order, their positions (B, num_keep) int32).

    Training passes the "routing" RNG stream (a function of seed and step); without it the
    draw is from the fixed key(0)."""
    key = self.make_rng("routing") if self.has_rng("routing") else jax.random.key(0)
    scores = routing.random_scores(key, x.shape[0], x.shape[1] - 1)
    kept, keep_idx, _, _ = routing.split_tokens(x, scores, num_keep)
    return kept, keep_idx


STEMS = ("patch", "conv")


class ConvStem(nn.Module):
  """Xiao et al. 2021, "Early Convolutions Help Transformers See Better": log2(p) 3x3 stride-2
  convolutions, each with LayerNorm and ReLU, their channels doubling up to the width; ViT
  follows them with a 1x1 `embedding`. The same (H/p, W/p) token grid as a p x p patch kernel.

  The paper normalises with BatchNorm; LayerNorm over channels keeps the model free of batch
  statistics (one train state, identical replicas).
  """

  width: int
  patch_size: int  # a power of 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    """images: (B, H, W, 3) -> (B, H/p, W/p, C)."""
    x = images
    for i, channels in enumerate(conv_stem_channels(self.width, self.patch_size)):
      x = nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                  name=f"conv_{i}")(x)
      x = nn.relu(nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=f"norm_{i}")(x))
    return x


def _tokens_after_toe(num_patches: int, toe: toe_lib.ToEPlan | None) -> int:
  return num_patches if toe is None else toe.num_selected


class ViT(nn.Module):
  """ViT classifier. `__call__(images, train=...) -> (logits, aux)`.

  Attributes:
    variant: "<size>/<patch>", size in Te (testing), Ti, S, B, L; e.g. "S/16".
    num_classes: classifier outputs.
    image_size: square input side in pixels; a multiple of the patch size.
    dropout_rate: dropout after the embedding, attention and MLP layers.
    stochastic_depth: drop-path rate of the last block (linearly from 0 at the first).
    routing: which layers drop tokens and how, ToMe's merging and PatchDropout (default:
      none).
    toe: a ToE plan (skipvit_jax/models/toe.py) reducing the tokens after layer 1, or None. Drop
      layers then rank and restore within ToE's reduced sequence.
    attention: attention implementation name (see skipvit_jax.models.attention; "auto" picks per
      backend).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32, logits float32.
    remat: recompute each block's activations in the backward pass instead of storing them
      (less memory for about one more forward pass of compute; the same values).
    gelu: the MLP's GELU, "tanh" (the approximation vision_transformer and big_vision
      checkpoints were trained with) or "exact" (erf, timm's and DeiT's).
    stem: "patch", one p x p stride-p convolution (ViT), or "conv", ConvStem's stack of 3x3
      stride-2 convolutions before a 1x1 `embedding` (p a power of 2; parameters under "stem").

  aux:
    "routing": per drop layer, in layer order, a dict with
      cls_scores (B, n) float32 - the ranking scores of the n non-[CLS] tokens present,
      keep_idx (B, K) / drop_idx (B, n - K) int32 - positions in the sequence present
        at that layer ([CLS] excluded), ascending,
      kept_positions / dropped_positions - the same tokens' original patch positions
        (-1 for a fused token).
    "token_positions": per layer, (B, n) int32: the original patch position of each
      non-[CLS] token that layer's attention sees, in sequence order (-1 for a fused token).
    "attention": only with capture_attention=True, per layer (B, H, n, n) float32 softmax
      probabilities over the tokens present at that layer (the same tokens).
    "toe": with an active ToE plan, out_index (B, 1 + S) int32: each token's position in the
      full sequence after ToE (0 for [CLS]).
    "tome": when ToMe merges in this forward pass, merge_groups (B, P) int32: for each
      original patch, the index of the final token (in the encoder's output sequence, [CLS]
      being 0) it ended in, composed over every merge (-1 for a patch PatchDropout removed);
      sizes (B, N') float32: the patches each final token stands for. With ToMe,
      "token_positions" gives each token's host patch (an unmerged token's own, a merged
      group's B token's).
    "patch_dropout": in training with patch_keep_rate < 1, keep_idx (B, K) int32: the patch
      positions kept at the input, ascending.
  """

  variant: str = "S/16"
  num_classes: int = 1000
  image_size: int = 224
  dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  routing: RoutingConfig = RoutingConfig()
  toe: toe_lib.ToEPlan | None = None
  attention: str = "auto"
  dtype: Any = jnp.float32
  remat: bool = False
  gelu: str = "tanh"
  stem: str = "patch"

  def __post_init__(self):
    # Fail on bad configuration at construction, long before anything is traced.
    dims = decode_variant(self.variant)
    if self.image_size % dims.patch_size:
      raise ValueError(
          f"image_size: must be a multiple of the patch size {dims.patch_size}, "
          f"got {self.image_size}"
      )
    if self.num_classes < 1:
      raise ValueError(f"num_classes: must be >= 1, got {self.num_classes}")
    for field in ("dropout_rate", "stochastic_depth"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(f"{field}: must be in [0, 1), got {getattr(self, field)}")
    attention.check_implementation(self.attention)
    if self.gelu not in GELUS:
      raise ValueError(f"gelu: must be one of {GELUS}, got {self.gelu!r}")
    if self.stem not in STEMS:
      raise ValueError(f"stem: must be one of {STEMS}, got {self.stem!r}")
    if self.stem == "conv":
      conv_stem_channels(dims.width, dims.patch_size)
    if self.toe is not None:
      if not self.toe.active:
        raise ValueError("toe: pass None instead of an inactive ToE plan")
      if self.toe.num_patches != self.num_patches:
        raise ValueError(
            f"toe: the plan is for {self.toe.num_patches} patches, the model has {self.num_patches}"
        )
      if self.routing.tome.merges or self.routing.patch_keep_rate < 1.0:
        raise ValueError(
            "toe: ToE does not combine with ToMe (RoutingConfig.tome) or PatchDropout "
            "(RoutingConfig.patch_keep_rate); use one of them")
      if self.routing.drop_layers and self.routing.drop_layers[0] < 2:
        raise ValueError(
            f"RoutingConfig.drop_layers: with ToE (after layer 1) drop layers must be in "
            f"2..{dims.depth}, got {self.routing.drop_layers}"
        )
    if (self.routing.tome.merges and self.routing.tome.proportional_attention
        and self.attention not in attention.BIAS_IMPLEMENTATIONS):
      raise ValueError(
          f"attention: ToMe's proportional attention adds a logit bias, which {self.attention!r} "
          f"does not take; must be one of {attention.BIAS_IMPLEMENTATIONS}, or "
          "ToMeConfig(proportional_attention=False)")
    for train in (True, False):
      self.token_plan(train)  # validates the routing against this model
    super().__post_init__()

  @property
  def dims(self) -> ViTDims:
    return decode_variant(self.variant)

  @property
  def num_patches(self) -> int:
    return (self.image_size // decode_variant(self.variant).patch_size) ** 2

  @property
  def routing_plan(self) -> routing.RoutingPlan:
    """The routing's static token counts in this model at evaluation (after ToE, if any;
    without PatchDropout, which only trains). `token_plan(train=True)` gives training's."""
    return self.token_plan(train=False)

  def token_plan(self, train: bool) -> routing.RoutingPlan:
    """The routing's static token counts in training or at evaluation (after ToE, if any)."""
    return self.routing.plan(self.dims.depth, _tokens_after_toe(self.num_patches, self.toe),
                             train=train)

  @nn.compact
  def __call__(
      self, images: Array, *, train: bool, capture_attention: bool = False
  ) -> tuple[Array, dict]:
    """images: (B, H, W, 3) -> (logits (B, num_classes) float32, aux)."""
    dims = self.dims
    expected = (self.image_size, self.image_size, 3)
    if images.shape[1:] != expected:
      raise ValueError(f"images: expected (B, {', '.join(map(str, expected))}), got {images.shape}")
    x = images.astype(self.dtype)
    kernel = dims.patch_size
    if self.stem == "conv":
      x = ConvStem(dims.width, dims.patch_size, self.dtype, name="stem")(x)
      kernel = 1
    x = nn.Conv(
        dims.width, (kernel, kernel), strides=(kernel, kernel), padding="VALID",
        dtype=self.dtype, name="embedding",
    )(x)
    x = x.reshape(x.shape[0], -1, dims.width)  # (B, P, C)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, dims.width))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, dims.width)), x], 1)

    x, aux = Encoder(
        dims, self.routing, self.toe, self.attention, self.dropout_rate, self.stochastic_depth,
        self.dtype, self.remat, self.gelu, name="Transformer",
    )(x, train=train, capture_attention=capture_attention)
    logits = nn.Dense(
        self.num_classes, kernel_init=nn.initializers.zeros, dtype=jnp.float32, name="head"
    )(x[:, 0].astype(jnp.float32))
    return logits, aux
