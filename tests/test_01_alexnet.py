"""Chapter 01: LeNet and AlexNet against counted and reference numbers."""
import pytest
import torch
import torchvision

from utils import plot, profile, references
from utils.checks import InputSizeError
from utils.models import AlexNet, alexnet, alexnet_paper, lenet


def test_lenet_shape_and_params():
    net = lenet()
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # 156 + 2,416 + 48,120 + 10,164 + 850 (D2L's LeNet for 28x28 inputs)
    assert profile.count_params(net) == 61_706
    # multiply-adds: conv1 117,600 + conv2 240,000 + fc 48,000 + 10,080 + 840
    assert profile.count_flops(net, (1, 1, 28, 28)) == 2 * 416_520


def test_alexnet_book_layout():
    net = alexnet()
    assert net(torch.zeros(1, 1, 224, 224)).shape == (1, 10)
    assert net.classifier[1].in_features == 6400
    assert profile.count_params(net) == 46_764_746  # REFERENCES.md: D2L AlexNet, 1 channel, 10 classes
    with torch.device("meta"):
        meta = alexnet()
    # conv MACs 33.9M + 415.4M + 127.4M + 191.1M + 127.4M, linear 43.0M
    assert profile.count_flops(meta, (1, 1, 224, 224)) == 1_876_292_352


def test_alexnet_paper_layout():
    with torch.device("meta"):
        net = alexnet_paper()
    assert profile.count_params(net) == 62_378_344  # REFERENCES.md: alexnet.ungrouped.params (groups merged)
    assert net.classifier[1].in_features == 9216
    # MACs by hand: conv 105,415,200 + 447,897,600 + 149,520,384 + 224,280,576 + 149,520,384,
    # linear 37,748,736 + 16,777,216 + 4,096,000 = 1,135,256,096
    assert profile.count_flops(net, (1, 3, 227, 227)) == 2 * 1_135_256_096


def test_torchvision_variant_is_ours_with_other_settings():
    reference = torchvision.models.alexnet(weights=None).eval()
    ours = AlexNet(1000, 3, conv_channels=(64, 192, 384, 256, 256), first_padding=2, pool_to=6).eval()
    assert profile.count_params(ours) == 61_100_840  # torchvision
    for mine, theirs in zip(ours.parameters(), reference.parameters()):
        mine.data.copy_(theirs.data)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
    macs = profile.count_flops(ours, (1, 3, 224, 224)) / 2
    assert round(macs / 1e9, 3) == 0.714  # torchvision's metadata: 0.714 "GFLOPS" (GMACs)
    assert macs == profile.count_flops(reference, (1, 3, 224, 224)) / 2


def test_wrong_inputs_are_explained():
    with pytest.raises(InputSizeError, match="193 to 224 pixels.*resize=224"):
        alexnet()(torch.zeros(1, 1, 32, 32))
    with pytest.raises(InputSizeError, match="in_channels=3"):
        alexnet()(torch.zeros(1, 3, 224, 224))
    with pytest.raises(InputSizeError, match="resize=28"):
        lenet()(torch.zeros(1, 1, 64, 64))
    with pytest.raises(InputSizeError, match="unsqueeze"):
        lenet()(torch.zeros(1, 28, 28))


def _alexnet_grouped():
    """The paper's two-GPU network: conv2, conv4 and conv5 with groups=2 (as in the chapter)."""
    net = alexnet_paper()
    for i in (3, 8, 10):
        old = net.features[i]
        net.features[i] = torch.nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size,
                                          padding=old.padding, groups=2)
    return net


def _layers(module):
    return [m for m in module.modules() if not list(m.children())]


def test_alexnet_grouped_matches_references():
    net = _alexnet_grouped()
    assert profile.count_params(net) == references.value("alexnet.grouped.params") == 60_965_224
    macs = profile.count_flops(net, (1, 3, 227, 227)) / 2
    assert round(macs / 1e9, 3) == references.value("alexnet.grouped.gmacs")
    assert profile.count_params(alexnet_paper()) == references.value("alexnet.ungrouped.params")


def test_lenet_beside_alexnet_diagram():
    lenet_model, alexnet_model = lenet(), alexnet()
    diagram = plot.compare_architectures({"LeNet": (lenet_model, (1, 28, 28)),
                                          "AlexNet": (alexnet_model, (1, 224, 224))})
    assert len(diagram.parts) == 2
    for part, model in enumerate((lenet_model, alexnet_model)):
        assert diagram.layer_count(part) == len(_layers(model))  # every layer that runs
        assert diagram.parallels(part) == [] and diagram.repeats(part) == []  # a plain chain
    kinds = [box.kind for box, _ in diagram.boxes(1)]
    assert kinds.count("Conv2d") == 5 and kinds.count("MaxPool2d") == 3
    assert kinds.count("Linear") == 3 and kinds.count("Dropout") == 2
    assert [box.kind for box, _ in diagram.boxes(0)].count("AvgPool2d") == 2
    assert diagram.boxes(1)[-1][0].shape[-1] == 10


def test_paper_layout_diagram_shows_the_groups():
    grouped, merged = _alexnet_grouped(), alexnet_paper()
    diagram = plot.compare_architectures({"Paper (2 groups)": (grouped, (3, 227, 227)),
                                          "Groups merged": (merged, (3, 227, 227))})
    for part, model in enumerate((grouped, merged)):
        assert diagram.layer_count(part) == len(_layers(model))
        assert diagram.parallels(part) == [] and diagram.repeats(part) == []
    convs = [[box.text for box, _ in diagram.boxes(part) if box.kind == "Conv2d"] for part in (0, 1)]
    assert [", g2" in text for text in convs[0]] == [False, True, False, True, True]
    assert not any(", g2" in text for text in convs[1])
    assert "9216" in " ".join(box.text for box, _ in diagram.boxes(1))


def test_decade_table_growth():
    """D2L Table 1.5.1, 1970 -> 2020: data and compute x10^10 each, memory only x10^8."""
    def growth(kind):
        return references.value(f"decade.2020.{kind}") / references.value(f"decade.1970.{kind}")

    assert [round(growth(k)) for k in ("data", "memory", "compute")] == [10**10, 10**8, 10**10]
    for year in (1970, 2020):  # while compute per sample stays at 1,000 FLOPS
        assert references.value(f"decade.{year}.compute") / references.value(f"decade.{year}.data") == 1e3


def test_conv1_filter_grid_has_one_image_per_filter():
    weight = alexnet().features[0].weight
    assert weight.shape == (96, 1, 11, 11)
    figure = plot.filters(weight, columns=16)
    assert len(figure.axes) == 96 and all(len(ax.images) == 1 for ax in figure.axes)


def test_accepted_sides_searches_the_sides_that_fit_the_linear_layer():
    from utils.checks import accepted_sides
    net = alexnet()
    assert accepted_sides(net.feature_side, 5) == net.input_sizes == (193, 224)
    assert net.feature_side(192) == 4 and net.feature_side(225) == 6
    assert net.feature_side(64) == 0 and net.feature_side(65) == 1
    assert accepted_sides(net.feature_side, 5, pooled=True) == (65, 10**6)
    with pytest.raises(ValueError, match="no input side from 8 to 1023 gives a 1000x1000 feature map"):
        accepted_sides(net.feature_side, 1000)
