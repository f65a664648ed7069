"""Chapter 07 (v2/v3): BN-Inception and Inception-v3 against their reference numbers."""
import pytest
import torch
import torchvision

from utils import profile
from utils.checks import InputSizeError
from utils.models import (BasicConv2d, InceptionV3A, InceptionV3B, InceptionV3C, InceptionV3D,
                          InceptionV3E, InceptionBNBlock, inception_bn, inception_v3,
                          inception_v3_min_size)

# torchvision.models.inception_v3 documentation / REFERENCES.md: 23,834,568 parameters without
# the auxiliary head, 27,161,264 with it, 5.713 GFLOPS (really GMACs) at 299x299.
V3_PARAMS, V3_PARAMS_AUX, V3_MACS = 23_834_568, 27_161_264, 5.713e9
# BN-Inception: the paper prints no count; counted from Figure 5 of Ioffe & Szegedy (2015)
# with bias-free convolutions (our layout), at 224x224.
BN_PARAMS, BN_MACS = 11_285_224, 2_032_600_064


def meta(factory, **kwargs):
    with torch.device("meta"):
        return factory(**kwargs)


def test_basic_conv_keys_match_torchvision():
    ours = BasicConv2d(3, 8, kernel_size=3)
    theirs = torchvision.models.inception.BasicConv2d(3, 8, kernel_size=3)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.bn.eps == 0.001 and ours.conv.bias is None


def test_inception_v3_imagenet_counts():
    net = meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=False)
    assert profile.count_params(net) == V3_PARAMS
    assert round(profile.count_flops(net, (1, 3, 299, 299)) / 2e9, 3) == V3_MACS / 1e9
    assert profile.count_params(meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=True)) == V3_PARAMS_AUX


def test_inception_v3_flops_equal_torchvision():
    with torch.device("meta"):
        reference = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=False,
                                                    transform_input=False)
    ours = meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=False)
    assert profile.count_flops(ours, (1, 3, 299, 299)) == profile.count_flops(reference, (1, 3, 299, 299))


def test_inception_v3_outputs_equal_torchvision():
    torch.manual_seed(0)
    reference = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=False,
                                                transform_input=False).eval()
    ours = inception_v3(num_classes=1000, in_channels=3, aux_logits=False).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_inception_v3_aux_keys_match_torchvision():
    with torch.device("meta"):
        reference = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True)
    ours = meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=True)
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs


def test_bn_inception_counts():
    net = meta(inception_bn, num_classes=1000, in_channels=3)
    assert profile.count_params(net) == BN_PARAMS
    assert profile.count_flops(net, (1, 3, 224, 224)) == 2 * BN_MACS


def test_block_shapes():
    assert InceptionBNBlock(192, 64, 64, 64, 64, 96, 32)(torch.zeros(1, 192, 28, 28)).shape == (1, 256, 28, 28)
    assert InceptionBNBlock(320, 0, 128, 160, 64, 96, 0, "max", 2)(torch.zeros(1, 320, 28, 28)).shape == (1, 576, 14, 14)
    with torch.device("meta"):
        assert InceptionV3A(192, 32)(torch.zeros(1, 192, 35, 35)).shape == (1, 256, 35, 35)
        assert InceptionV3B(288)(torch.zeros(1, 288, 35, 35)).shape == (1, 768, 17, 17)
        assert InceptionV3C(768, 128)(torch.zeros(1, 768, 17, 17)).shape == (1, 768, 17, 17)
        assert InceptionV3D(768)(torch.zeros(1, 768, 17, 17)).shape == (1, 1280, 8, 8)
        assert InceptionV3E(1280)(torch.zeros(1, 1280, 8, 8)).shape == (1, 2048, 8, 8)


def test_fashion_mnist_configurations():
    torch.manual_seed(0)
    assert inception_bn()(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with torch.device("meta"):
        net = inception_v3()  # aux head on: training returns (main, aux)
        main, aux = net(torch.zeros(2, 1, 299, 299))
        assert main.shape == aux.shape == (2, 10)
        low_res = inception_v3(stem_stride=1, stem_pool=False)
        main, aux = low_res(torch.zeros(2, 1, 79, 79))
        assert aux.shape == (2, 10)
        assert net.eval()(torch.zeros(2, 1, 75, 75)).shape == (2, 10)


def test_min_sizes_are_the_papers_resolutions():
    # Szegedy et al. 2016, Sec. 7: 299, 151 and 79 px variants (77 is the exact minimum of the last).
    assert inception_v3_min_size() == 75
    assert inception_v3_min_size(aux=True) == 299
    assert inception_v3_min_size(1, True, aux=True) == 151
    assert inception_v3_min_size(1, False, aux=True) == 77


def test_wrong_inputs_raise_helpful_errors():
    with torch.device("meta"):
        net = inception_v3(aux_logits=False).eval()
        with pytest.raises(InputSizeError, match="3 channels"):
            net(torch.zeros(1, 3, 299, 299))
        with pytest.raises(InputSizeError, match="at least 75x75"):
            net(torch.zeros(1, 1, 64, 64))
        with pytest.raises(InputSizeError, match="auxiliary classifier"):
            inception_v3(aux_logits=True)(torch.zeros(2, 1, 75, 75))
        with pytest.raises(InputSizeError, match="BN-Inception"):
            inception_bn()(torch.zeros(1, 1, 16, 16))
