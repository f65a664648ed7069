"""Chapter 02 (VGG): exact sizes and costs against torchvision, outputs with copied weights, errors."""
import pytest
import torch
import torchvision
from torch import nn

from utils import profile
from utils.checks import InputSizeError
from utils.models import VGG_CONFIGS, vgg, vgg11, vgg13, vgg16, vgg19, vgg_block

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
    # REFERENCES.md: 512*7*7*4096 = 102,760,448 (the lecture's 100,112,896 is a slip).
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
