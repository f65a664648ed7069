"""Chapter 05 (batch normalization): the from-scratch layer against PyTorch's, and BN-LeNet's size."""
import math

import pytest
import torch
from torch import nn

from utils import profile
from utils.checks import InputSizeError
from utils import plot
from utils.models import BatchNorm, BNLeNet, NiN, batch_norm, bn_lenet, bn_lenet_concise, nin_bn, nin_bn_block

# D2L's BN-LeNet (Fashion-MNIST, 1 channel, 10 classes, no padding in conv1), counted by hand:
# conv1 156 + bn 12 + conv2 2,416 + bn 32 + fc1 30,840 + bn 240 + fc2 10,164 + bn 168 + fc3 850.
BN_LENET_PARAMS = 44_878
# Forward FLOPs at 28x28, 2 per multiply-add, conv and linear only (FlopCounterMode):
# 2 * (6*24*24*25 + 16*8*8*150 + 256*120 + 120*84 + 84*10) = 2 * 281,640.
BN_LENET_FLOPS = 563_280

SHAPES = {"1d": (nn.BatchNorm1d, (16, 7)), "2d": (nn.BatchNorm2d, (4, 3, 6, 6))}


def paired_layers(kind, seed=0, **kwargs):
    """Our BatchNorm and PyTorch's, with the same random gamma/beta."""
    reference_cls, shape = SHAPES[kind]
    generator = torch.Generator().manual_seed(seed)
    reference = reference_cls(shape[1], **kwargs)
    ours = BatchNorm(shape[1], **kwargs)
    with torch.no_grad():
        reference.weight.copy_(0.5 + torch.rand(shape[1], generator=generator))
        reference.bias.copy_(torch.randn(shape[1], generator=generator))
        ours.gamma.copy_(reference.weight)
        ours.beta.copy_(reference.bias)
    return ours, reference, shape, generator


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_matches_pytorch_in_training_over_several_steps(kind, momentum):
    ours, reference, shape, generator = paired_layers(kind, momentum=momentum)
    for step in range(6):
        batch_shape = (shape[0] + 3 * step,) + shape[1:]  # batch size changes: n/(n-1) changes
        X = (2 * step + (step + 1) * torch.randn(batch_shape, generator=generator)).requires_grad_()
        X_ref = X.detach().clone().requires_grad_()
        out, out_ref = ours(X), reference(X_ref)
        torch.testing.assert_close(out, out_ref)
        torch.testing.assert_close(ours.running_mean, reference.running_mean)
        torch.testing.assert_close(ours.running_var, reference.running_var)
        upstream = torch.randn(out.shape, generator=generator)
        (out * upstream).sum().backward()
        (out_ref * upstream).sum().backward()
        torch.testing.assert_close(X.grad, X_ref.grad)
        torch.testing.assert_close(ours.gamma.grad, reference.weight.grad)
        torch.testing.assert_close(ours.beta.grad, reference.bias.grad)
        ours.zero_grad(), reference.zero_grad()


@pytest.mark.parametrize("kind", SHAPES)
def test_matches_pytorch_in_eval_and_eval_changes_nothing(kind):
    ours, reference, shape, generator = paired_layers(kind)
    for step in range(3):
        X = 1.5 * step + torch.randn(shape, generator=generator)
        ours(X), reference(X)
    ours.eval(), reference.eval()
    saved = ours.running_mean.clone(), ours.running_var.clone()
    for _ in range(2):
        X = torch.randn((1,) + shape[1:], generator=generator)  # batch 1 is fine in eval mode
        torch.testing.assert_close(ours(X), reference(X))
    torch.testing.assert_close(ours.running_mean, saved[0], rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, saved[1], rtol=0, atol=0)


def test_momentum_convention_by_hand():
    # Batch 1, 2, 3, 6: mean 3, biased var 3.5 (normalization), unbiased 14/3 (running var).
    X = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    Y, mean, var = batch_norm(X, torch.ones(1), torch.zeros(1), torch.zeros(1), torch.ones(1), training=True)
    torch.testing.assert_close(Y.flatten(), (X.flatten() - 3) / math.sqrt(3.5 + 1e-5))
    assert math.isclose(mean.item(), 0.1 * 3, rel_tol=1e-6)
    assert math.isclose(var.item(), 0.9 * 1 + 0.1 * 14 / 3, rel_tol=1e-6)


def test_batch_of_one_in_training_raises_like_pytorch():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(5)(torch.randn(1, 5))
    with pytest.raises(ValueError, match="2D|4D|expects"):
        BatchNorm(5)(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="expects"):
        BatchNorm(5)(torch.randn(2, 4))


def test_bn_lenet_size_and_flops():
    for factory in (bn_lenet, bn_lenet_concise):
        with torch.device("meta"):
            net = factory()
        assert profile.count_params(net) == BN_LENET_PARAMS
        assert profile.count_flops(net, (1, 1, 28, 28)) == BN_LENET_FLOPS
    assert sum(isinstance(m, BatchNorm) for m in bn_lenet().modules()) == 4
    assert isinstance(bn_lenet(), BNLeNet)


def test_bn_lenet_matches_concise_version_in_both_modes():
    torch.manual_seed(0)
    scratch, concise = bn_lenet(), bn_lenet_concise()
    renamed = {k.replace(".gamma", ".weight").replace(".beta", ".bias"): v for k, v in scratch.state_dict().items()}
    result = concise.load_state_dict(renamed, strict=False)
    assert not result.unexpected_keys
    assert all(key.endswith("num_batches_tracked") for key in result.missing_keys)
    X = torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(scratch.train()(X), concise.train()(X))
    torch.testing.assert_close(scratch.bn3.running_var, concise.bn3.running_var)
    torch.testing.assert_close(scratch.eval()(X[:1]), concise.eval()(X[:1]))


def test_bn_lenet_shapes_and_input_errors():
    net = bn_lenet(num_classes=5, in_channels=3)
    assert net(torch.rand(2, 3, 28, 28)).shape == (2, 5)
    with pytest.raises(InputSizeError, match="channels"):
        bn_lenet()(torch.rand(2, 3, 28, 28))
    with pytest.raises(InputSizeError, match="resize=28"):
        bn_lenet()(torch.rand(2, 1, 32, 32))


def test_lenet_vs_bn_lenet_diagram_places_one_batch_norm_after_each_layer_but_the_last():
    from utils import plot
    from utils.models import lenet

    net = bn_lenet()
    diagram = plot.compare_architectures({"LeNet": (lenet(), (1, 28, 28)), "BN-LeNet": (net, (1, 28, 28))})
    kinds = [box.kind for box, _ in diagram.boxes(1)]
    assert diagram.layer_count(1) == len(list(net.children())) == 16
    assert kinds.count("BatchNorm") == 4 and kinds[-1] == "Linear"
    weighted = [i for i, kind in enumerate(kinds) if kind in ("Conv2d", "Linear")]
    assert len(weighted) == 5
    for i in weighted[:-1]:  # conv1, conv2, fc1, fc2: BN right after, then the sigmoid
        assert kinds[i + 1:i + 3] == ["BatchNorm", "Sigmoid"]
    assert [box.owner for box, _ in diagram.boxes(1) if box.kind == "BatchNorm"] == [("bn1",), ("bn2",), ("bn3",), ("bn4",)]
    assert [box.shape for box, _ in diagram.boxes(1) if box.kind == "BatchNorm"] == [(6, 24, 24), (16, 8, 8), (120,), (84,)]
    lenet_kinds = [box.kind for box, _ in diagram.boxes(0)]
    assert "BatchNorm" not in lenet_kinds and diagram.layer_count(0) == 12
    assert [k for k in kinds if k != "BatchNorm"] == lenet_kinds


def test_nin_bn_has_one_batch_norm_after_every_convolution():
    net = nin_bn()
    assert isinstance(net, NiN)
    layers = list(net.modules())
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 12  # 4 NiN blocks x 3 convolutions
    assert all(isinstance(layers[i + 1], nn.BatchNorm2d) and layers[i + 1].num_features == layers[i].out_channels
               for i in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 12
    assert net(torch.rand(2, 1, 67, 67)).shape == (2, 10)


def test_nin_bn_block_diagram_matches_the_block():
    block = nin_bn_block(1, 96, kernel_size=11, stride=4)
    kinds = [type(m) for m in block]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
    diagram = plot.architecture(block, (1, 224, 224), title="BN-NiN block 1")
    assert diagram.layer_count() == len(block)
