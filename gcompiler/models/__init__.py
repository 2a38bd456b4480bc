"""The model zoo: GAN generators, discriminators and perceptual-loss feature nets, by name.

>>> from gcompiler import models
>>> g = models.create("resnet_9blocks")            # CycleGAN generator, reference key layout
>>> x, = models.spec("resnet_9blocks").example_inputs(size=64)
>>> models.available(kind="discriminator")
['dcgan_d', 'patchgan_d']

Every model traces with torch.fx (torch.nn modules as leaves) and keeps the state-dict key layout of
its public reference implementation, so :func:`gcompiler.checkpoint.load_checkpoint` reads the
published checkpoints unchanged.
"""
from gcompiler.models.registry import (
    InputSpec,
    ModelSpec,
    available,
    create,
    image,
    label,
    noise,
    register_model,
    spec,
)

# Importing a family module registers its models.
from gcompiler.models import (  # noqa: E402,F401  isort: skip
    cartoongan,
    dcgan,
    mobile_resnet,
    patchgan,
    resnet,
    rrdbnet,
    sngan,
    srresnet,
    stargan,
    unet,
    vgg,
)

__all__ = [
    "InputSpec", "ModelSpec", "available", "create", "image", "label", "noise", "register_model", "spec",
]
