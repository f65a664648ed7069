"""Chapter 06 (ResNet): exact sizes, FLOPs and outputs against torchvision's ResNets."""
import pytest
import torch
import torchvision

from utils import profile
from utils.checks import InputSizeError
from utils.models import (BottleneckBlock, PreActBlock, ResidualBlock, ResNeXtBlock,
                          preact_resnet18, resnet18, resnet34, resnet50, resnext50_32x4d)

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


# ----------------------------------------------------------------- diagrams (section 3 and 4.1)
def leaf_calls(module, input_shape):
    """Number of leaf-module calls in one forward pass (a ReLU used twice counts twice)."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1))
             for m in module.modules() if not list(m.children())]
    with torch.no_grad():
        module.eval()(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return len(calls)


def branch_lengths(diagram):
    (parallel,) = diagram.parallels()
    return sorted(len(branch.items) for branch in parallel.branches)


def test_basic_block_diagrams():
    from utils import plot
    identity, projection = ResidualBlock(64, 64), ResidualBlock(64, 128, stride=2)
    for block, shortcut in ((identity, 0), (projection, 2)):
        diagram = plot.architecture(block, (64, 56, 56))
        assert branch_lengths(diagram) == [shortcut, 5]  # conv-BN-ReLU-conv-BN beside the shortcut
        assert diagram.layer_count() == leaf_calls(block, (64, 56, 56))
        texts = [box.text for box, _ in diagram.boxes()]
        assert texts[-1] == "ReLU" and ("Conv 1×1, s2" in texts) == bool(shortcut)
    both = plot.compare_architectures({"Identity shortcut": (identity, (64, 56, 56)),
                                       "Projection shortcut": (projection, (64, 56, 56))})
    assert [title for title, _ in both.parts] == ["Identity shortcut", "Projection shortcut"]


def test_bottleneck_diagram():
    from utils import plot
    block = BottleneckBlock(256, 64)
    diagram = plot.architecture(block, (256, 56, 56), title="Bottleneck block")
    assert block.downsample is None and branch_lengths(diagram) == [0, 8]
    assert diagram.layer_count() == leaf_calls(block, (256, 56, 56)) == 9
    shapes = [box.shape for box, _ in diagram.boxes() if box.kind == "Conv2d"]
    assert shapes == [(64, 56, 56), (64, 56, 56), (256, 56, 56)]


def test_resnet18_stage_diagram():
    from utils import plot
    net = resnet18()

    def label(block, name):
        conv = block.conv1
        shortcut = "" if block.downsample is None else f", /{conv.stride[0]}, 1×1 projection"
        return f"basic block {conv.in_channels}→{conv.out_channels}{shortcut}"

    diagram = plot.architecture(net, (1, 96, 96), blocks=(ResidualBlock,), block_label=label)
    blocks = [(box.text, box.shape, n) for box, n in diagram.boxes() if box.kind == "ResidualBlock"]
    assert blocks[0] == ("basic block 64→64", (64, 24, 24), 2)  # stage 2: two identical blocks
    assert [text for text, _, _ in blocks[1::2]] == [
        f"basic block {c}→{2 * c}, /2, 1×1 projection" for c in (64, 128, 256)]
    assert [shape for _, shape, _ in blocks] == [(64, 24, 24), (128, 12, 12), (128, 12, 12),
                                                (256, 6, 6), (256, 6, 6), (512, 3, 3), (512, 3, 3)]
    assert sum(n for _, _, n in blocks) == 8 and [r.times for r in diagram.repeats()] == [2]
    # one box layer per distinct module: 4 stem + 8 blocks (5 each) + 3 projections (2) + pool + fc
    assert diagram.layer_count() == sum(1 for m in net.modules() if not list(m.children())) == 52


def test_orderings_diagram():
    """Section 3.4: original (ReLU after the addition) beside pre-activation (addition last)."""
    from utils import plot
    original, preact = ResidualBlock(64, 64), PreActBlock(64, 64)
    diagram = plot.compare_architectures({"Original": (original, (64, 56, 56)),
                                          "Pre-activation": (preact, (64, 56, 56))})
    assert [title for title, _ in diagram.parts] == ["Original", "Pre-activation"]
    kinds = [[box.kind for box, _ in diagram.boxes(part)] for part in (0, 1)]
    assert kinds[0][-2:] == ["add", "ReLU"] and kinds[1][-1] == "add"  # nothing after the add
    assert kinds[1][1:3] == ["BatchNorm2d", "ReLU"] and kinds[0][1] == "Conv2d"
    for part, (block, branch) in enumerate(((original, 5), (preact, 6))):
        (parallel,) = diagram.parallels(part)  # conv-BN-ReLU-conv-BN / BN-ReLU-conv twice
        assert sorted(len(b.items) for b in parallel.branches) == [0, branch]
        assert diagram.layer_count(part) == leaf_calls(block, (64, 56, 56))
        assert diagram.repeats(part) == []


def test_resnet34_stage_diagram_beside_resnet18():
    from utils import plot

    def label(block, name):
        conv = block.conv1
        shortcut = "" if block.downsample is None else f", /{conv.stride[0]}, 1×1 projection"
        return f"basic block {conv.in_channels}→{conv.out_channels}{shortcut}"

    nets = {"ResNet-18": resnet18(1000, 3), "ResNet-34": resnet34(1000, 3)}
    diagram = plot.compare_architectures({k: (net, (3, 224, 224)) for k, net in nets.items()},
                                         blocks=(ResidualBlock,), block_label=label)
    assert [r.times for r in diagram.repeats(0)] == [2]
    assert sorted(r.times for r in diagram.repeats(1)) == [2, 3, 3, 5]
    for part, (net, layers) in enumerate(((nets["ResNet-18"], (2, 2, 2, 2)),
                                          (nets["ResNet-34"], (3, 4, 6, 3)))):
        blocks = [(box, n) for box, n in diagram.boxes(part) if box.kind == "ResidualBlock"]
        assert sum(n for _, n in blocks) == sum(layers)
        projections = [box.text for box, n in blocks if "projection" in box.text]
        assert len(projections) == 3 and all(n == 1 for box, n in blocks if "projection" in box.text)
        assert [box.shape for box, _ in blocks][-1] == (512, 7, 7)
        assert diagram.layer_count(part) == sum(1 for m in net.modules() if not list(m.children()))
        assert diagram.parallels(part) == []  # blocks drawn as single boxes


def test_grouped_convolution_saving():
    dense = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False)
    grouped = torch.nn.Conv2d(128, 128, 3, padding=1, groups=32, bias=False)
    assert profile.count_params(dense) == 32 * profile.count_params(grouped) == 147_456
    assert profile.count_flops(dense, (1, 128, 56, 56)) == 32 * profile.count_flops(grouped, (1, 128, 56, 56))


def test_resnext_block():
    block = ResNeXtBlock(256, 64)
    assert block.conv2.groups == 32 and block.conv2.in_channels == block.conv2.out_channels == 128
    assert profile.count_params(block) == 71_168 == profile.count_params(BottleneckBlock(256, 64)) + 768
    assert ResNeXtBlock(256, 128, stride=2)(torch.randn(1, 256, 8, 8)).shape == (1, 512, 4, 4)
    assert ResNeXtBlock(256, 128, stride=2).conv2.out_channels == 256  # 32 paths of 8


def test_resnext_diagram():
    from utils import plot
    block = ResNeXtBlock(256, 64)
    diagram = plot.compare_architectures({"ResNet-50 block": (BottleneckBlock(256, 64), (256, 56, 56)),
                                          "ResNeXt-50 block": (block, (256, 56, 56))})
    for part in (0, 1):
        (parallel,) = diagram.parallels(part)
        assert sorted(len(branch.items) for branch in parallel.branches) == [0, 8]
    assert diagram.layer_count(1) == leaf_calls(block, (256, 56, 56)) == 9
    convs = [(box.text, box.shape) for box, _ in diagram.boxes(1) if box.kind == "Conv2d"]
    assert convs[1] == ("Conv 3×3, p1, g32", (128, 56, 56))
    assert [shape for _, shape in convs] == [(128, 56, 56), (128, 56, 56), (256, 56, 56)]


def test_resnext50_matches_torchvision():
    from utils import references
    from utils.weights import copy_weights_by_position, max_output_difference
    torch.manual_seed(0)
    reference = torchvision.models.resnext50_32x4d(weights=None)
    randomize_batch_norms(reference)
    with torch.device("meta"):
        ours = resnext50_32x4d(1000, 3)
    assert profile.count_params(ours) == profile.count_params(reference) == references.value("resnext50.params")
    assert profile.count_flops(ours, (1, 3, 224, 224)) == profile.count_flops(reference, (1, 3, 224, 224))
    assert round(profile.count_flops(ours, (1, 3, 224, 224)) / 2e9, 2) == references.value("resnext50.gmacs")
    copy_weights_by_position(reference, ours)
    assert max_output_difference(reference, ours, (1, 3, 128, 128)) < 1e-4


def test_zero_init_network_is_its_shortest_path():
    """Section 8.3: with zeroed branches ResNet-50's blocks are identities or projections."""
    torch.manual_seed(0)
    net = resnet50(zero_init_residual=True).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in stage:
                assert torch.count_nonzero(block.residual(h)) == 0
                h = block(h)
        torch.testing.assert_close(net(x), net.fc(torch.flatten(net.avgpool(h), 1)))
    shortest = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                   *[torch.nn.Sequential(stage[0].downsample, torch.nn.ReLU())
                                     for stage in (net.layer1, net.layer2, net.layer3, net.layer4)],
                                   net.avgpool, torch.nn.Flatten(), net.fc)
    with torch.no_grad():
        torch.testing.assert_close(net(x), shortest(x))
