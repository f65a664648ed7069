"""Chapter 02 (VGG): exact sizes and costs against torchvision, outputs with copied weights, errors."""
import pytest
import torch
import torchvision
from torch import nn

from utils import plot, profile, references
from utils.checks import InputSizeError
from utils.models import VGG_CONFIGS, VGGBlock, vgg, vgg11, vgg13, vgg16, vgg19, vgg_block

IMAGENET = (1, 3, 224, 224)

# torchvision's model documentation / weights metadata: parameters and GFLOPS (really GMACs).
TORCHVISION = {
    "vgg11": (vgg11, 132_863_336, 7.609),
    "vgg13": (vgg13, 133_047_848, 11.308),
    "vgg16": (vgg16, 138_357_544, 15.470),
    "vgg19": (vgg19, 143_667_240, 19.632),
}


def on_meta(factory, **kwargs):
    with torch.device("meta"):
        return factory(**kwargs)


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_imagenet_params_and_flops_match_torchvision(name):
    factory, params, gmacs = TORCHVISION[name]
    ours = on_meta(factory, num_classes=1000, in_channels=3)
    theirs = on_meta(getattr(torchvision.models, name))
    assert profile.count_params(ours) == profile.count_params(theirs) == params
    flops = profile.count_flops(ours, IMAGENET)
    assert flops == profile.count_flops(theirs, IMAGENET)
    assert round(flops / 2e9, 3) == gmacs  # FLOPs = 2 x MACs


def test_configuration_c_has_1x1_convolutions():
    # VGG paper, Table 1 and Table 2 (C: 134 million parameters, 16 weight layers).
    net = on_meta(vgg, conv_arch=VGG_CONFIGS["C"], num_classes=1000, in_channels=3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and sum(c.kernel_size == (1, 1) for c in convs) == 3
    assert profile.count_params(net) == 133_638_952
    assert round(profile.count_params(net) / 1e6) == 134


def test_first_fully_connected_layer_of_vgg16():
    # REFERENCES.md: 512*7*7*4096 = 102,760,448.
    fc6 = on_meta(vgg16, num_classes=1000, in_channels=3).classifier[1]
    assert fc6.weight.numel() == 512 * 7 * 7 * 4096 == 102_760_448


def test_book_vgg11_width_divisor_4():
    # D2L: conv_arch channels // 4 -> 16, 32, 64, 128, 128; head 128*7*7 -> 4096 -> 4096 -> 10.
    net = vgg11(width_divisor=4)
    assert [b[0].out_channels for b in net.features] == [16, 32, 64, 128, 128]
    assert net.classifier[1].in_features == 128 * 7 * 7 == 6272
    assert profile.count_params(net) == 43_093_322  # counted
    assert net(torch.zeros(2, 1, 224, 224)).shape == (2, 10)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)  # smallest input: five 2x2 pools


def test_vgg_block_shapes():
    block = vgg_block(3, 4, 8)
    assert block(torch.zeros(1, 4, 10, 10)).shape == (1, 8, 5, 5)
    assert sum(isinstance(m, nn.Conv2d) for m in block) == 3


def copy_in_order(source, target):
    with torch.no_grad():
        pairs = list(zip(source.state_dict().values(), target.state_dict().values()))
        assert len(pairs) == len(source.state_dict()) == len(target.state_dict())
        for theirs, ours in pairs:
            assert theirs.shape == ours.shape
            ours.copy_(theirs)


@pytest.mark.parametrize("name", ["vgg11", "vgg16", "vgg19"])
def test_outputs_match_torchvision_with_copied_weights(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None).eval()  # random init, no download
    ours = on_meta(TORCHVISION[name][0], num_classes=1000, in_channels=3).to_empty(device="cpu").eval()
    copy_in_order(theirs, ours)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_wrong_inputs_explain_what_to_do():
    net = vgg11(width_divisor=16)
    with pytest.raises(InputSizeError, match="at least 32x32"):
        net(torch.zeros(1, 1, 28, 28))
    with pytest.raises(InputSizeError, match="in_channels=3"):
        net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputSizeError, match="unsqueeze"):
        net(torch.zeros(1, 64, 64))


def test_block_diagram_matches_the_block():
    block = vgg_block(2, 64, 128)
    diagram = plot.architecture(block, (64, 56, 56), title="VGG block")
    assert diagram.layer_count() == len(block) == 5  # conv, ReLU, conv, ReLU, pool
    assert diagram.parallels() == [] and diagram.repeats() == []
    kinds = [box.kind for box, _ in diagram.boxes()]
    assert kinds == ["input", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert diagram.boxes()[-1][0].shape == (128, 28, 28)  # only the pool halves the side


def test_vgg11_diagram_one_box_per_block():
    net = vgg11(num_classes=1000, in_channels=3)
    diagram = plot.architecture(net, (3, 224, 224), blocks=(VGGBlock,),
                                block_label=lambda block, name: f"{len(block)} layers")
    boxes = [box for box, _ in diagram.boxes()]
    block_boxes = [box for box in boxes if box.kind == "VGGBlock"]
    assert len(block_boxes) == len(VGG_CONFIGS["A"]) == 5
    assert [box.shape for box in block_boxes] == [(64, 112, 112), (128, 56, 56), (256, 28, 28),
                                                  (512, 14, 14), (512, 7, 7)]
    assert [box.layers for box in block_boxes] == [len(block) for block in net.features]
    layers = sum(len(block) for block in net.features) + 1 + len(net.classifier)
    assert diagram.layer_count() == layers == 30
    assert sum(box.kind == "Linear" for box in boxes) == 3


def test_vgg_errors_compare_like_with_like():
    # Simonyan & Zisserman 2015, Table 3: dense evaluation, one test scale, validation set.
    fixed = [references.value(k) for k in ("vgg11.top1", "vgg13.top1", "vggC.s256.top1",
                                           "vgg16.s256.top1", "vgg19.s256.top1")]
    assert fixed == [29.6, 28.7, 28.1, 27.0, 27.3]
    jittered = [references.value(k) for k in ("vggC.top1", "vgg16.top1", "vgg19.top1")]
    assert jittered == [27.3, 25.6, 25.5]
    for key in ("vgg11.top1", "vgg16.s256.top1", "vgg19.top1"):
        assert "dense" in references.get(key).protocol and "validation" in references.get(key).protocol
