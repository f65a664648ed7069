"""Chapter 06 (ResNet): exact sizes, FLOPs and outputs against torchvision's ResNets."""
import pytest
import torch
import torchvision

from utils import profile
from utils.checks import InputSizeError
from utils.models import (BottleneckBlock, PreActBlock, ResidualBlock, preact_resnet18, resnet18,
                          resnet34, resnet50)

FACTORIES = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}

# Parameters: torchvision's ResNet weight metadata (num_params), also REFERENCES.md.
IMAGENET_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
# Multiply-adds at 224x224: torchvision's metadata "_ops" (GFLOPS, really GMACs) 1.814 / 3.664 /
# 4.089; the exact integers are FlopCounterMode's count on torchvision's own models (checked
# below against torchvision itself). ResNet-50 is torchvision's "v1.5" (stride in the 3x3 conv).
IMAGENET_MACS = {"resnet18": 1_814_073_344, "resnet34": 3_663_761_408, "resnet50": 4_089_184_256}
# ResNet-50 v1 (stride in the first 1x1 conv, the paper's layout): counted with FlopCounterMode
# on torchvision's resnet50 with the strides moved; the paper's Table 1 quotes "3.8 x 10^9".
RESNET50_V1_MACS = 3_857_973_248
# D2L's Fashion-MNIST ResNet-18 in our torchvision-style blocks (no conv biases, BN on the
# projection); D2L's own version (biases, no BN on the 1x1 conv) has 11,178,378.
FASHION_RESNET18_PARAMS = 11_175_370
FASHION_RESNET18_MACS_96 = 318_657_536


def meta_model(factory, **kwargs):
    with torch.device("meta"):
        return factory(num_classes=1000, in_channels=3, **kwargs)


@pytest.mark.parametrize("name", FACTORIES)
def test_imagenet_params_and_flops(name):
    net = meta_model(FACTORIES[name])
    assert profile.count_params(net) == IMAGENET_PARAMS[name]
    flops = profile.count_flops(net, (1, 3, 224, 224))
    assert flops == 2 * IMAGENET_MACS[name]
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
    assert profile.count_flops(reference, (1, 3, 224, 224)) == flops
    assert profile.count_params(reference) == IMAGENET_PARAMS[name]


def test_reference_numbers_rounded_as_published():
    # REFERENCES.md: 1.814 / 3.664 / 4.089 GMACs
    rounded = {name: round(macs / 1e9, 3) for name, macs in IMAGENET_MACS.items()}
    assert rounded == {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089}


def test_resnet50_v1_layout():
    net = meta_model(resnet50, stride_in_1x1=True)
    assert profile.count_params(net) == IMAGENET_PARAMS["resnet50"]  # same weights, other strides
    assert profile.count_flops(net, (1, 3, 224, 224)) == 2 * RESNET50_V1_MACS
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer2[0].conv2.stride == (1, 1)


def test_fashion_mnist_resnet18():
    net = resnet18()
    assert profile.count_params(net) == FASHION_RESNET18_PARAMS
    assert profile.count_flops(net, (1, 1, 96, 96)) == 2 * FASHION_RESNET18_MACS_96
    assert net(torch.randn(2, 1, 96, 96)).shape == (2, 10)
    assert net.forward_features(torch.randn(1, 1, 96, 96)).shape == (1, 512, 3, 3)


def randomize_batch_norms(net):
    """Non-trivial BN statistics and affine parameters, so a misplaced BN would show."""
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def compare_with_reference(ours, reference, size):
    randomize_batch_norms(reference)
    ours.load_state_dict(reference.state_dict())  # strict: every name and shape must agree
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("name,size", [("resnet18", 224), ("resnet34", 128), ("resnet50", 128)])
def test_outputs_match_torchvision(name, size):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    compare_with_reference(FACTORIES[name](1000, 3), reference, size)


def test_resnet50_v1_matches_torchvision_with_moved_strides():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    for stage in (reference.layer2, reference.layer3, reference.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    compare_with_reference(resnet50(1000, 3, stride_in_1x1=True), reference, 96)


def test_block_shapes_and_projection():
    x = torch.randn(4, 3, 6, 6)
    assert ResidualBlock(3, 3).downsample is None
    assert ResidualBlock(3, 3)(x).shape == (4, 3, 6, 6)
    assert ResidualBlock(3, 6, stride=2)(x).shape == (4, 6, 3, 3)
    assert ResidualBlock(3, 3, use_projection=True).downsample is not None
    with pytest.raises(ValueError, match="use_projection=True"):
        ResidualBlock(3, 6, stride=2, use_projection=False)
    assert PreActBlock(3, 6, stride=2)(x).shape == (4, 6, 3, 3)
    assert BottleneckBlock(3, 4, stride=2)(x).shape == (4, 16, 3, 3)
    assert profile.count_params(ResidualBlock(64, 64)) == 73_984  # 2*3*3*64*64 + 2*2*64


def test_zero_residual_gives_identity():
    torch.manual_seed(0)
    block = ResidualBlock(8, 8)
    block.zero_residual_()
    x = torch.relu(torch.randn(2, 8, 5, 5))
    for mode in (True, False):
        assert torch.equal(block.train(mode)(x), x)
    preact = PreActBlock(8, 8)
    preact.zero_residual_()
    signed = torch.randn(2, 8, 5, 5)
    assert torch.equal(preact(signed), signed)


def test_zero_init_residual_option():
    net = resnet18(zero_init_residual=True)
    with torch.no_grad():
        assert all(torch.count_nonzero(block.bn2.weight) == 0
                   for stage in (net.layer1, net.layer2, net.layer3, net.layer4) for block in stage)
        assert torch.count_nonzero(net.layer1[0].bn1.weight) == 64


def test_small_input_and_preact():
    assert resnet18(small_input=True)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    net = preact_resnet18()
    assert net.name == "ResNet-18" and net.final_norm is not None
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    assert resnet50().name == "ResNet-50" and resnet34().name == "ResNet-34"


def test_wrong_inputs_say_what_to_do():
    net = resnet18()
    with pytest.raises(InputSizeError, match="in_channels=3"):
        net(torch.randn(1, 3, 96, 96))
    with pytest.raises(InputSizeError, match="resize=32"):
        net(torch.randn(1, 1, 28, 28))
    with pytest.raises(InputSizeError, match="unsqueeze"):
        net(torch.randn(1, 96, 96))
