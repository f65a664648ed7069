"""Chapter 04: GoogLeNet (Inception v1) against the reference numbers of REFERENCES.md."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.googlenet import Inception as TorchvisionInception

from utils import plot, profile, references, train
from utils.checks import InputSizeError
from utils.models import GOOGLENET_TABLE1, GoogLeNet, GoogLeNetAux, GoogLeNetConv, Inception, googlenet

IMAGENET = (1, 3, 224, 224)


def on_meta(factory, *args, **kwargs):
    with torch.device("meta"):
        return factory(*args, **kwargs)


def macs(net, shape):
    return profile.count_flops(net, shape) // 2


# ----------------------------------------------------------------------------- whole models

def test_d2l_fashion_mnist_parameters():
    # D2L's GoogLeNet for Fashion-MNIST (1 channel, 10 classes): 5,977,530 (REFERENCES.md).
    assert profile.count_params(on_meta(googlenet)) == 5_977_530


def test_paper_layout_parameters_and_macs():
    # Paper layout (Table 1, 5x5 branch, conv biases, no BN, no aux): 6,998,552 params and
    # 1.583 GMACs at 224 px, counted from the paper's Table 1 (REFERENCES.md).
    net = on_meta(googlenet, num_classes=1000, in_channels=3, dropout=0.4)
    assert profile.count_params(net) == 6_998_552
    assert macs(net, IMAGENET) == 1_582_671_872
    assert round(macs(net, IMAGENET) / 1e9, 3) == 1.583


def test_torchvision_numbers_and_the_quirk():
    # torchvision GoogLeNet (BN, 3x3 in place of 5x5): 6,624,904 params, 1.498 GMACs (REFERENCES.md).
    reference = on_meta(torchvision.models.googlenet, weights=None, aux_logits=False, init_weights=False)
    assert profile.count_params(reference) == 6_624_904
    assert round(macs(reference, IMAGENET) / 1e9, 3) == 1.498
    # Our layout with the 3x3 quirk has exactly torchvision's multiply-adds (BN is not counted);
    # BN's gamma and beta replace one bias per conv channel: 7,280 parameters more.
    quirk = on_meta(googlenet, num_classes=1000, in_channels=3, wide_kernel=3)
    assert macs(quirk, IMAGENET) == macs(reference, IMAGENET) == 1_498_376_192
    conv_channels = sum(m.out_channels for m in quirk.modules() if isinstance(m, nn.Conv2d))
    assert profile.count_params(reference) - profile.count_params(quirk) == conv_channels == 7_280


def test_table1_output_channels_and_layers():
    # Paper's Table 1, last column.
    net = on_meta(googlenet)
    outputs = [getattr(net, f"inception{name}").out_channels for name in GOOGLENET_TABLE1]
    assert outputs == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 57


def test_stage_shapes_at_96_and_224():
    rows = profile.output_shapes(on_meta(googlenet), (1, 1, 96, 96))
    shapes = {name: shape for name, _, shape, _ in rows}
    assert shapes["maxpool2"] == (1, 192, 12, 12)
    assert shapes["inception4a"] == (1, 512, 6, 6)
    assert shapes["inception5b"] == (1, 1024, 3, 3)
    rows = profile.output_shapes(on_meta(googlenet, num_classes=1000, in_channels=3), IMAGENET)
    shapes = {name: shape for name, _, shape, _ in rows}
    assert shapes["maxpool2"] == (1, 192, 28, 28) and shapes["inception5b"] == (1, 1024, 7, 7)
    assert shapes["fc"] == (1, 1000)


# ----------------------------------------------------------------------------- the classic comparison

def test_block_3a_against_single_convolutions():
    # The usual quote: 0.16M vs 0.44M vs 1.22M params, 128M vs 350M vs 900M "FLOPs" (multiply-adds).
    # REFERENCES.md: block 3a has 163,696 params with biases, 163,328 without, 128M multiply-adds.
    block = Inception(192, *GOOGLENET_TABLE1["3a"])
    weights = sum(p.numel() for n, p in block.named_parameters() if n.endswith("weight"))
    assert profile.count_params(block) == 163_696 and weights == 163_328
    assert macs(block, (1, 192, 28, 28)) == 163_328 * 784 == 128_049_152
    conv3 = nn.Conv2d(192, 256, 3, padding=1)
    conv5 = nn.Conv2d(192, 256, 5, padding=2)
    assert conv3.weight.numel() == 442_368 and conv5.weight.numel() == 1_228_800
    assert macs(conv3, (1, 192, 28, 28)) == 346_816_512   # the quoted "350M"
    assert macs(conv5, (1, 192, 28, 28)) == 963_379_200   # the quoted "900M"
    assert round(profile.count_params(block) / 1e6, 2) == 0.16
    assert round(conv3.weight.numel() / 1e6, 2) == 0.44
    assert int(conv5.weight.numel() / 1e4) / 100 == 1.22
    # The quoted "FLOPs" are multiply-adds, rounded: 128M, 350M, 900M.
    assert round(128_049_152 / 1e6) == 128
    assert round(346_816_512 / 1e7) * 10 == 350
    assert 963_379_200 // 10**8 * 100 == 900


# ----------------------------------------------------------------------------- reference outputs

def test_block_matches_torchvision_inception():
    # torchvision's Inception built with our conv unit is our block with the 3x3 quirk.
    torch.manual_seed(0)
    reference = TorchvisionInception(192, *GOOGLENET_TABLE1["3a"], conv_block=GoogLeNetConv).eval()
    ours = Inception(192, *GOOGLENET_TABLE1["3a"], wide_kernel=3).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 192, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_branch_order_is_the_papers():
    torch.manual_seed(0)
    block = Inception(16, 4, 4, 8, 2, 6, 3).eval()
    x = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        out = block(x)
        parts = [block.branch1(x), block.branch2(x), block.branch3(x), block.branch4(x)]
    assert [p.shape[1] for p in parts] == [4, 8, 6, 3]
    torch.testing.assert_close(out, torch.cat(parts, 1))
    assert block.branch3[1].conv.kernel_size == (5, 5)


# ----------------------------------------------------------------------------- auxiliary classifiers

def test_auxiliary_heads_train_and_eval():
    torch.manual_seed(0)
    net = googlenet(aux_logits=True)
    x = torch.randn(2, 1, 64, 64)
    outputs = net.train()(x)
    assert isinstance(outputs, tuple) and len(outputs) == 3
    assert all(o.shape == (2, 10) for o in outputs)
    assert net.eval()(x).shape == (2, 10)
    assert googlenet().train()(x).shape == (2, 10)  # no heads: a tensor in both modes


def test_auxiliary_head_sizes():
    # Paper: avgpool 5x5/3 -> 1x1 conv 128 -> fc 1024 -> dropout 0.7 -> fc classes.
    head = GoogLeNetAux(512, 10)
    assert head.dropout.p == 0.7
    assert profile.count_params(head) == (512 * 128 + 128) + (2048 * 1024 + 1024) + (1024 * 10 + 10)
    assert head(torch.randn(1, 512, 6, 6)).shape == (1, 10)     # 96 px input
    assert head(torch.randn(1, 512, 14, 14)).shape == (1, 10)   # 224 px input
    assert profile.count_params(on_meta(googlenet, aux_logits=True)) == 5_977_530 + 4_350_228
    paper_aux = on_meta(googlenet, num_classes=1000, in_channels=3, aux_logits=True)
    assert profile.count_params(paper_aux) == 6_998_552 + 3_188_840 + 3_190_888


def test_fit_accepts_auxiliary_outputs():
    torch.manual_seed(0)
    batches = [(torch.rand(4, 1, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    history = train.fit(googlenet(aux_logits=True), batches, batches[:1], epochs=1, lr=0.01,
                        device="cpu", progress=False)
    assert history.epochs == 1 and 0.0 <= history.test_acc[0] <= 1.0


# ----------------------------------------------------------------------------- wrong inputs

def test_too_small_input_says_to_resize():
    with pytest.raises(InputSizeError, match="resize=96"):
        googlenet()(torch.zeros(1, 1, 28, 28))
    assert GoogLeNet.min_size == 32
    assert googlenet()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_wrong_channels_say_how_to_build():
    with pytest.raises(InputSizeError, match="in_channels=3"):
        googlenet()(torch.zeros(1, 3, 96, 96))
    with pytest.raises(InputSizeError, match="batch"):
        googlenet()(torch.zeros(1, 96, 96))


# ----------------------------------------------------------------------------- diagrams

def _label(block, name):
    return f"Inception {name.removeprefix('inception')}"


def test_inception_block_diagram():
    # Block 3a: four branches joined by one Concat; every layer of the block drawn once.
    block = Inception(192, *GOOGLENET_TABLE1["3a"])
    diagram = plot.architecture(block, (192, 28, 28), title="Inception block 3a")
    (fork,) = diagram.parallels()
    assert len(fork.branches) == 4
    kinds = [[box.kind for box in branch.items] for branch in fork.branches]
    assert kinds == [["Conv2d", "ReLU"], ["Conv2d", "ReLU", "Conv2d", "ReLU"],
                     ["Conv2d", "ReLU", "Conv2d", "ReLU"], ["MaxPool2d", "Conv2d", "ReLU"]]
    assert [branch.items[-1].shape[0] for branch in fork.branches] == [64, 128, 32, 32]
    boxes = [box for box, _ in diagram.boxes()]
    assert sum(box.text == "Concat" for box in boxes) == 1 and boxes[-1].shape == (256, 28, 28)
    # 6 convolutions, 6 ReLUs and the pool
    assert diagram.layer_count() == 13 == sum(1 for m in block.modules() if not list(m.children()))


def test_googlenet_diagram_with_auxiliary_heads():
    net = googlenet(aux_logits=True)
    diagram = plot.architecture(net, (1, 96, 96), blocks=(Inception,), training=True,
                                block_label=_label)
    counted = [(box, n) for box, n in diagram.boxes() if box.kind == "Inception"]
    assert sum(n for _, n in counted) == 9
    assert [box.text for box, _ in counted] == [_label(None, f"inception{k}") for k in GOOGLENET_TABLE1]
    # two forks in training mode: after 4a (aux1) and after 4d (aux2), each head starting with its pool
    forks = diagram.parallels()
    assert len(forks) == 2 and all(len(fork.branches) == 2 for fork in forks)
    heads = [fork.branches[0].items[0].owner[0] for fork in forks]
    assert heads == ["aux1", "aux2"]
    # in evaluation mode the heads do not run, so the diagram has no fork
    plain = plot.architecture(net, (1, 96, 96), blocks=(Inception,), training=False)
    assert plain.parallels() == [] and sum(n for b, n in plain.boxes() if b.kind == "Inception") == 9
    assert diagram.layer_count() - plain.layer_count() == 2 * 7


def test_top5_references_name_their_protocol():
    assert references.value("googlenet.top5.1crop") == 10.07
    assert references.value("googlenet.top5.10crop") == 9.15
    assert references.value("googlenet.top5.144crop") == 7.89
    assert references.value("googlenet.top5.ensemble") == 6.67
    assert "144 crops" in references.get("googlenet.top5.ensemble").protocol
