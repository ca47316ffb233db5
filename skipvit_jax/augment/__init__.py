"""Training augmentation that runs on the device, inside the compiled step.

policy.py is timm's RandAugment policy (the spec string, the op lists, the level arithmetic),
shared with the host-side PIL reference in data/randaugment.py; color.py and geometry.py are
the ops on uint8 batches; batch.py composes flip, RandAugment, normalisation and random
erasing for one device's shard; mix.py mixes the shard's examples (mixup, cutmix) and their
targets. Imports JAX and numpy only, so the step does not pull in the data stack.
"""
