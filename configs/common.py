"""The fields every training config has, each commented once here; config files override."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'row=6-55-11,baseline' -> {row: '6-55-11', baseline: True} over `defaults`.

  A bare word sets a boolean flag; values keep the type of their default."""
  parsed = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r}: allowed keys are {sorted(defaults)}")
    if not sep:
      parsed[key] = True
    elif isinstance(defaults[key], bool):
      parsed[key] = value.lower() in ("1", "true", "yes")
    else:
      parsed[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return ml_collections.ConfigDict(parsed)


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters, data order, augmentation and dropout all derive from it
  config.num_cpu_devices = 0  # > 0: split a CPU-only host into this many pmap devices

  config.model = ml_collections.ConfigDict()
  config.model.variant = "S/16"  # "<size>/<patch>": Te (testing), Ti, S, B, L
  config.model.dropout_rate = 0.0  # dropout after embedding, attention and MLP
  config.model.stochastic_depth = 0.0  # drop-path rate of the last block (0 at the first)
  config.model.attention = "auto"  # attention implementation (skipvit_jax/models/attention.py)
  config.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params stay f32)
  config.model.remat = False  # recompute each block's activations in the backward pass
  config.model.gelu = "auto"  # "tanh", "exact" (erf: timm/DeiT), "auto": init_from's, else tanh
  config.model.stem = "patch"  # "patch" (ViT's p x p kernel) or "conv" (3x3 stride-2 convolutions)

  # SkipViT routing (skipvit_jax/models/routing.py); 1-based layers as in the paper. No drop layers
  # = a dense ViT.
  config.routing = ml_collections.ConfigDict()
  config.routing.drop_layers = ()  # layers that drop tokens, increasing
  config.routing.drop_ratios = ()  # fraction dropped at each drop layer, in [0, 1)
  config.routing.return_layer = 0  # layer before which dropped tokens return (0 = none)
  config.routing.mode = "skip"  # "skip" (SkipViT), "fused" (EViT token), "drop"
  config.routing.drop_point = "after_attention"  # or "block_input"
  config.routing.ratio_of = "present"  # ratios of the tokens present, or "original"
  config.routing.fuse_normalize = False  # "fused": normalise the fusion weights
  config.routing.score = "cls_attention"  # token ranking; "random": the random-subset control
  # Train with all tokens this long before routing (drop layers, ToMe and PatchDropout alike).
  config.drop_warmup_epochs = 0.0  # epochs on all tokens first

  # ToMe token merging (skipvit_jax/models/tome.py, docs/method.md §8): after each layer's
  # attention, r tokens are averaged into their most similar ones. Not with drop layers or ToE.
  config.tome = ml_collections.ConfigDict()
  config.tome.r = 0  # tokens merged per layer (0 = off), capped at half of those present
  config.tome.inflection = 0.0  # schedule: 0 constant r, -1 decreasing 2r..0, +1 increasing
  config.tome.start_layer = 1  # first layer that merges (1-based)
  config.tome.proportional_attention = True  # add log(token size) to every key's logits
  config.tome.merge_at_eval = True  # evaluate with the same merging (the paper); False: all

  # PatchDropout (docs/method.md §9): in training only, a uniformly random subset of the patch
  # tokens enters layer 1 (drop layers then work within it). Not with ToE.
  config.patch_dropout = ml_collections.ConfigDict()
  config.patch_dropout.keep_rate = 1.0  # fraction of patch tokens kept (1.0 = off)

  # ToE token expansion after layer 1 (skipvit_jax/models/toe.py); stages start at given epochs.
  config.toe = ml_collections.ConfigDict()
  config.toe.enabled = False  # off: no ToE
  config.toe.expansion_epochs = (0, 100, 200)  # 0-based epoch at which each stage starts
  config.toe.keep_rates = (0.5, 0.75, 1.0)  # kept fraction of patch tokens per stage
  config.toe.init_rate = 0.25  # seed rate r0 (stride int(1 // r0))
  config.toe.substeps = 2  # expansion sub-steps per stage (the paper's repetition step)
  config.toe.sparse_eval = False  # evaluate with the current stage's reduction (else all tokens)

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic"  # "synthetic", "fashion_mnist" or a TFDS name ("cifar10")
  config.data.data_dir = ""  # TFDS data dir ("" = TFDS default; synthetic, fashion: ~/.cache)
  # "fashion_mnist"'s four idx files (`apt-get install dataset-fashion-mnist` puts them here):
  config.data.source_dir = "/usr/share/datasets/fashion-mnist"  # read once, when preparing
  config.data.image_size = 224  # model input side in pixels
  # Input normalisation: "minus_one_to_one" (vision_transformer and big_vision checkpoints),
  # "imagenet" (mean/std: timm and DeiT checkpoints); see skipvit_jax/models/pretrained.py.
  config.data.normalization = "dataset"  # the dataset's: [-1, 1] synthetic/Fashion, else imagenet
  config.data.train_split = "train"  # TFDS split names
  config.data.eval_split = "validation"  # (the synthetic dataset's are "train" and "test")
  config.data.num_threads = 8  # loader threads per host
  # The synthetic and Fashion-MNIST splits (each under 2 GiB) read once into memory, on first
  # use (skipvit_jax/data/in_memory.py): the loader threads index arrays, not decode records.
  config.data.in_memory = True  # False: read every example from its array_record file
  # Training augmentation after the crop: flip, then these, then normalisation and erasing.
  # "device": in the compiled step (skipvit_jax/augment/), the host only decoding and cropping,
  # in uint8 (docs/training.md).
  config.data.augment_on = "host"  # "host": per example on the host (data/pipeline.py)
  config.data.rand_augment = ""  # timm RandAugment spec ("rand-m9-mstd0.5-inc1"); "" = off
  config.data.random_erase = 0.0  # probability of erasing one rectangle with noise (timm)
  config.data.random_translate = 0  # largest random shift in pixels (padded crop); 0 = off
  config.data.repeated_augmentations = 1  # copies of each image per global batch (DeiT: 3)
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.num_train = 20_000  # synthetic examples generated for training ...
  config.data.synthetic.num_test = 2_000  # ... and for its test split
  config.data.synthetic.seed = 0  # generation seed (independent of config.seed)

  config.batch_size = 1024  # global, split over all devices (must divide evenly)
  config.eval_batch_size = 1024  # global
  config.num_epochs = 300.0  # training length ...
  config.num_train_steps = -1  # ... or, when > 0, in steps

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 1e-3  # peak learning rate
  config.optimizer.warmup_lr = 1e-6  # learning rate at step 0
  config.optimizer.warmup_epochs = 5.0  # linear warm-up to lr, then cosine decay ...
  config.optimizer.min_lr = 1e-5  # ... to min_lr at the last step
  config.optimizer.weight_decay = 0.05  # AdamW decoupled weight decay (not on biases/norms)
  config.optimizer.b1 = 0.9  # Adam first-moment decay
  config.optimizer.b2 = 0.999  # Adam second-moment decay
  config.optimizer.eps = 1e-8  # Adam denominator epsilon
  config.optimizer.grad_clip_norm = 0.0  # global-norm clipping; 0 = off

  config.label_smoothing = 0.1  # target = (1 - e) one-hot + e / classes
  config.mixup_alpha = 0.8  # Beta(alpha, alpha) mixup; 0 = off
  config.cutmix_alpha = 1.0  # cutmix; 0 = off
  config.mix_switch_prob = 0.5  # chance of cutmix when both are on
  config.ema_decay = 0.0  # > 0: keep an EMA of the parameters, evaluated as eval_ema/*
  config.grad_accum_steps = 1  # micro-batches per update (batch_size is the whole update)

  config.log_every_steps = 100  # progress line and train metrics cadence
  config.eval_every_epochs = 1.0  # evaluation cadence (and always at the end)
  config.checkpoint_every_steps = 1000  # checkpoint cadence (and always at the end)
  config.keep_checkpoints = 3  # checkpoints kept in workdir/checkpoints
  # Pretrained weights to start from (skipvit_jax/models/pretrained.py: vision_transformer or
  # big_vision .npz, timm .safetensors/.pth, a skipvit_jax workdir); used only when the workdir
  # has no checkpoint yet (resuming always wins).
  config.init_from = ""  # "": from scratch
  config.stop_after_step = -1  # >= 0: checkpoint and stop there, as if pre-empted
  # Resuming with other model, routing, ToE, data or batch settings than the workdir's run is
  # an error listing the fields, unless this allows it (a deliberate change mid-run).
  config.allow_resume_with_changes = False  # True: resume anyway
  return config
