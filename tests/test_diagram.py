"""utils.diagram: the drawing's structure matches the module it is drawn from."""
import pytest
import torch
from torch import nn

from utils import models, plot
from utils.diagram import Box, Parallel, structure


def leaf_count(module):
    return sum(1 for m in module.modules() if next(m.children(), None) is None)


def layer_calls(module, input_shape, training=False):
    """How many times a layer (a module without submodules) runs in one forward pass."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in module.modules()
             if next(m.children(), None) is None]
    module.train(training)
    with torch.no_grad():
        module(torch.zeros(2, *input_shape))
    for hook in hooks:
        hook.remove()
    module.eval()
    return len(calls)


def drawn_kinds(diagram, part=0):
    return [box.kind for box, _ in diagram.boxes(part)]


def test_sequential_network_has_one_box_per_layer_with_its_shape():
    net = models.alexnet()
    diagram = plot.architecture(net, (1, 224, 224))
    boxes = [box for box, _ in diagram.boxes()]
    assert boxes[0].kind == "input" and boxes[0].shape == (1, 224, 224)
    assert len(boxes) - 1 == leaf_count(net) == diagram.layer_count()
    assert not diagram.parallels() and not diagram.repeats()
    conv1 = boxes[1]
    assert (conv1.kind, conv1.text, conv1.shape) == ("Conv2d", "Conv 11×11, s4, p1", (96, 54, 54))
    assert any(box.text == "Linear 6400→4096" for box in boxes)
    assert boxes[-1].shape == (10,)


def test_inception_block_is_four_branches_joined_by_a_concatenation():
    block = models.googlenet().inception3a
    diagram = plot.architecture(block, (192, 28, 28))
    (fork,) = diagram.parallels()
    assert len(fork.branches) == 4 and all(branch.items for branch in fork.branches)
    first_convs = [branch.items[0].text for branch in fork.branches]
    assert first_convs == ["Conv 1×1", "Conv 1×1", "Conv 1×1", "MaxPool 3×3, p1"]
    boxes = [box for box, _ in diagram.boxes()]
    assert boxes[-1].kind == "concat" and boxes[-1].shape == (256, 28, 28)
    assert diagram.layer_count() == leaf_count(block)


def test_residual_block_draws_the_identity_path_and_the_addition():
    diagram = plot.architecture(models.resnet18().layer1[0], (64, 24, 24))
    (fork,) = diagram.parallels()
    assert sorted(len(branch.items) for branch in fork.branches) == [0, 5]  # identity, conv path
    assert "add" in drawn_kinds(diagram)


def test_projection_shortcut_is_a_branch_of_its_own():
    diagram = plot.architecture(models.resnet18().layer2[0], (64, 24, 24))
    (fork,) = diagram.parallels()
    shortcut = min(fork.branches, key=lambda branch: len(branch.items))
    assert [box.kind for box in shortcut.items] == ["Conv2d", "BatchNorm2d"]


def test_identical_consecutive_blocks_collapse_into_one_repeat():
    stage = models.resnet18().layer1
    collapsed = plot.architecture(stage, (64, 24, 24))
    (repeat,) = collapsed.repeats()
    assert repeat.times == 2
    assert collapsed.layer_count() == layer_calls(stage, (64, 24, 24))  # the ReLU runs twice
    expanded = plot.architecture(stage, (64, 24, 24), collapse=False)
    assert not expanded.repeats() and len(expanded.parallels()) == 2
    assert len(expanded.boxes()) == 2 * len(collapsed.boxes()) - 1  # one input box


def test_blocks_are_drawn_whole_and_auxiliary_heads_appear_in_training():
    net = models.googlenet(aux_logits=True)
    eval_diagram = plot.architecture(net, (1, 96, 96), blocks=(models.Inception,))
    inception = [(box, times) for box, times in eval_diagram.boxes() if box.kind == "Inception"]
    assert sum(times for _, times in inception) == 9
    assert all(box.layers == leaf_count(net.inception3a) for box, _ in inception)
    assert not eval_diagram.parallels()  # eval mode: no auxiliary heads
    train_diagram = plot.architecture(net, (1, 96, 96), blocks=(models.Inception,),
                                      training=True)
    assert drawn_kinds(train_diagram)[-1] == "outputs"
    assert len(train_diagram.parallels()) == 2
    # every layer module that runs, plus the heads' functional ReLU after their first FC
    assert train_diagram.layer_count() == layer_calls(net, (1, 96, 96), training=True) + 2
    net.eval()
    plot.architecture(net, (1, 96, 96), training=True, blocks=(models.Inception,))
    assert not any(m.training for m in net.modules())


def test_block_label_receives_the_attribute_name():
    net = models.googlenet()
    diagram = plot.architecture(net, (1, 96, 96), blocks=(models.Inception,),
                                block_label=lambda block, name: name.replace("inception", ""))
    texts = [box.text for box, _ in diagram.boxes() if box.kind == "Inception"]
    assert texts == ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]


def test_scaled_residual_shows_its_scale():
    net = models.inception_resnet_v2()
    block = next(m for m in net.modules() if isinstance(m, models.InceptionResNetA))
    diagram = plot.architecture(block, (320, 35, 35))
    scale = [box for box, _ in diagram.boxes() if box.kind == "scale"]
    assert len(scale) == 1 and scale[0].text == f"× {block.scale:g}"
    outer = max(diagram.parallels(), key=lambda p: len(p.branches) == 2 and
                any(not b.items for b in p.branches))
    assert any(not branch.items for branch in outer.branches)


def test_side_by_side_and_horizontal_layouts():
    both = plot.compare_architectures({"LeNet": (models.lenet(), (1, 28, 28)),
                                       "AlexNet": (models.alexnet(), (1, 224, 224))})
    assert [title for title, _ in both.parts] == ["LeNet", "AlexNet"]
    assert both.layer_count(0) == leaf_count(models.lenet())
    width, height = plot.architecture(models.lenet(), (1, 28, 28), horizontal=True).figure \
        .get_size_inches()
    assert width > 3 * height
    assert both._repr_png_().startswith(b"\x89PNG")


def test_bad_input_shape_and_untraceable_forward_say_what_to_do():
    with pytest.raises(ValueError, match="channels, height, width"):
        plot.architecture(models.lenet(), (28, 28))

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 5)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else self.b(x)

    with pytest.raises(ValueError, match="blocks="):
        plot.architecture(nn.Sequential(Branchy(), nn.ReLU()), (1, 8, 8))
    diagram = plot.architecture(nn.Sequential(Branchy(), nn.ReLU()), (1, 8, 8), blocks=(Branchy,))
    assert drawn_kinds(diagram) == ["input", "Branchy", "ReLU"]


def test_structure_without_drawing():
    root = structure(models.googlenet().inception3a, (192, 28, 28))
    assert isinstance(root.items[1], Parallel) and isinstance(root.items[2], Box)
    assert torch.is_grad_enabled()


def test_blocks_with_the_same_label_and_shape_but_other_layers_are_not_collapsed():
    net = models.resnet18()  # each later stage: a block with a projection, then a plain block
    diagram = plot.architecture(net, (1, 96, 96), blocks=(models.ResidualBlock,))
    assert [r.times for r in diagram.repeats()] == [2]  # only stage 1's two identical blocks
    assert diagram.layer_count() == leaf_count(net)
