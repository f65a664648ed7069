"""Chapter 03 (NiN): parameter counts, 1x1 conv == per-pixel linear, GAP, input sizes, errors,
diagrams, the untrained network's scores."""
import math

import pytest
import torch
from torch import nn

from torch.nn import functional as F

from utils import plot, profile, references, train
from utils.checks import InputSizeError
from utils.models import NiNBlock, VGGBlock, alexnet, nin, nin_block, vgg11


def on_meta(factory, **kwargs):
    with torch.device("meta"):
        return factory(**kwargs)


def conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def test_nin_parameters_by_hand():
    # D2L layout: nin_block(1,96,11,4,0), (96,256,5,1,2), (256,384,3,1,1), (384,10,3,1,1).
    by_hand = sum(conv_params(k, c_in, c_out) + 2 * conv_params(1, c_out, c_out)
                  for k, c_in, c_out in [(11, 1, 96), (5, 96, 256), (3, 256, 384), (3, 384, 10)])
    assert profile.count_params(nin()) == by_hand == 1_992_166


def test_nin_has_no_linear_layer_and_imagenet_size():
    net = on_meta(nin, num_classes=1000, in_channels=3)
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    assert profile.count_params(net) == 7_439_608  # counted
    assert profile.count_flops(on_meta(nin), (1, 1, 224, 224)) == 1_524_594_704  # counted


def test_comparison_numbers():
    # REFERENCES.md: D2L AlexNet (Fashion-MNIST, 224) has 46,764,746 parameters.
    assert profile.count_params(on_meta(alexnet)) == 46_764_746
    assert profile.count_params(on_meta(vgg11, width_divisor=4)) == 43_093_322
    assert profile.count_params(on_meta(vgg11)) == 128_806_154


def test_nin_shapes():
    net = nin().eval()
    table = profile.output_shapes(net, (1, 1, 224, 224))
    shapes = {name: shape[1:] for name, _, shape, _ in table}
    assert shapes["block1"] == (96, 54, 54) and shapes["block4"] == (10, 5, 5)
    assert shapes["flatten"] == (10,)
    for side in (67, 96, 160):  # global average pooling: any size of at least 67
        assert net(torch.zeros(2, 1, side, side)).shape == (2, 10)


def test_nin_block():
    block = nin_block(3, 8, kernel_size=3, strides=1, padding=1)
    assert isinstance(block, NiNBlock)
    assert block(torch.zeros(2, 3, 9, 9)).shape == (2, 8, 9, 9)
    kernels = [m.kernel_size for m in block if isinstance(m, nn.Conv2d)]
    assert kernels == [(3, 3), (1, 1), (1, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in block) == 3


def test_1x1_convolution_is_a_linear_layer_at_every_pixel():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel_size=1)
    linear = nn.Linear(6, 5)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(5, 6))
        linear.bias.copy_(conv.bias)
    x = torch.randn(3, 6, 4, 7)
    torch.testing.assert_close(conv(x), linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_global_average_pooling_is_the_mean():
    x = torch.randn(2, 10, 5, 5)
    torch.testing.assert_close(nn.Flatten()(nn.AdaptiveAvgPool2d(1)(x)), x.mean(dim=(2, 3)))


def test_wrong_inputs_explain_what_to_do():
    net = nin()
    with pytest.raises(InputSizeError, match="at least 67x67"):
        net(torch.zeros(1, 1, 66, 66))
    with pytest.raises(InputSizeError, match="in_channels=3"):
        net(torch.zeros(1, 3, 96, 96))


def _layers(module):
    return [m for m in module.modules() if not list(m.children())]


def test_nin_block_diagram():
    block = nin_block(96, 256, kernel_size=5, strides=1, padding=2)
    diagram = plot.architecture(block, (96, 26, 26), title="NiN block 2", horizontal=True)
    boxes = [box for box, _ in diagram.boxes()][1:]  # after the input
    assert diagram.layer_count() == len(_layers(block)) == 6
    assert diagram.parallels() == [] and diagram.repeats() == []
    assert [box.kind for box in boxes] == ["Conv2d", "ReLU"] * 3
    assert [box.text for box in boxes if box.kind == "Conv2d"] == ["Conv 5×5, p2", "Conv 1×1", "Conv 1×1"]
    assert all(box.shape == (256, 26, 26) for box in boxes)  # every layer keeps the shape


def test_nin_beside_vgg11_diagram():
    def label(block, name):
        return f"{type(block).__name__} {name}"

    models = (nin(), vgg11())
    diagram = plot.compare_architectures({"NiN": (models[0], (1, 224, 224)),
                                          "VGG-11": (models[1], (1, 224, 224))},
                                         blocks=(NiNBlock, VGGBlock), block_label=label)
    assert len(diagram.parts) == 2
    for part, model in enumerate(models):
        assert diagram.layer_count(part) == len(_layers(model))  # blocks count all inside
        assert diagram.parallels(part) == [] and diagram.repeats(part) == []
    nin_boxes, vgg_boxes = ([box for box, _ in diagram.boxes(part)] for part in (0, 1))
    nin_kinds, vgg_kinds = [b.kind for b in nin_boxes], [b.kind for b in vgg_boxes]
    assert nin_kinds.count("NiNBlock") == 4 and nin_kinds.count("MaxPool2d") == 3
    assert all(b.layers == 6 for b in nin_boxes if b.kind == "NiNBlock")
    assert "Linear" not in nin_kinds and nin_kinds[-2:] == ["AdaptiveAvgPool2d", "Flatten"]
    assert vgg_kinds.count("VGGBlock") == 5 and vgg_kinds.count("Linear") == 3
    assert [b.text for b in nin_boxes if b.kind == "NiNBlock"] == [
        f"NiNBlock block{i}" for i in range(1, 5)]
    assert nin_boxes[-3].shape == (10, 5, 5) and nin_boxes[-1].shape == vgg_boxes[-1].shape == (10,)


def test_untrained_nin_starts_at_chance_with_dead_scores():
    torch.manual_seed(0)
    net = nin()
    train.init_xavier(net)
    with torch.no_grad():
        scores = net.eval()(torch.rand(32, 1, 96, 96))
    assert (scores >= 0).all() and (scores == 0).any()  # averages of ReLU outputs
    loss = F.cross_entropy(scores, torch.randint(0, 10, (32,)))
    assert abs(loss.item() - math.log(10)) < 0.1


def test_book_results_quoted_in_the_chapter():
    assert references.value("d2l.nin.test_acc") == 0.790
    assert references.value("d2l.nin.train_acc") == 0.786
    assert references.value("d2l.alexnet.test_acc") == 0.883
    ratio = profile.count_params(on_meta(alexnet)) / profile.count_params(nin())
    assert 23 <= ratio < 24  # "23 times fewer parameters"
