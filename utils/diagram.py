"""Architecture diagrams drawn from the module itself, so the picture cannot drift from the code.

:func:`architecture` traces a network with ``torch.fx``, runs one example through it to
learn every output shape, and draws the graph the way textbooks do: one labelled box per
layer (kind, kernel/stride/padding, output shape), parallel branches side by side and
joined by their concatenation (Inception) or addition (residual blocks, with the identity
path drawn as a line), and consecutive copies of the same block collapsed into one drawing
marked "x n". :func:`compare_architectures` draws several networks side by side.

The returned :class:`Diagram` shows itself in Jupyter and exposes what it drew
(:meth:`Diagram.boxes`, :meth:`Diagram.parallels`), so tests can check the drawing against
the module. Only matplotlib and torch are needed: no Graphviz.
"""
from __future__ import annotations

import io
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .checks import check_images

# ----------------------------------------------------------------------------- structure


@dataclass
class Box:
    """One drawn box: a layer, a block drawn whole, a join (concat, add), the input."""

    kind: str                  # "Conv2d", "ReLU", "concat", "add", "input", a block's class...
    text: str                  # first line of the label
    shape: tuple | None        # output shape without the batch dimension
    owner: tuple = ()          # module path the box belongs to, as components
    layers: int = 1            # layers this box stands for (a block drawn whole: all of them)
    fingerprint: str = ""      # the module's full configuration: equal boxes are equal layers

    @property
    def label(self) -> str:
        return self.text if not self.shape else f"{self.text}\n{_shape_text(self.shape)}"


@dataclass
class Series:
    """Items one after the other along the data flow."""

    items: list = field(default_factory=list)


@dataclass
class Parallel:
    """Branches that start from one tensor and meet again (or end at the outputs)."""

    branches: list  # of Series; an empty Series is the identity path


@dataclass
class Repeat:
    """``times`` consecutive copies of ``body`` (the same block, the same shapes)."""

    body: Series
    times: int


JOINS = ("concat", "add", "outputs")
NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm", "LayerNorm", "GroupNorm", "LocalResponseNorm")
ACTIVATIONS = ("ReLU", "Sigmoid", "Tanh", "LeakyReLU", "PReLU", "RReLU", "ELU", "GELU", "SiLU",
               "ReLU6", "Hardswish", "Softmax")


def _shape_text(shape) -> str:
    return "×".join(str(s) for s in shape)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _kernel_text(name, kernel, stride, padding, dilation=1, groups=1):
    kernel, stride = _pair(kernel), _pair(stride)
    text = f"{name} {kernel[0]}×{kernel[1]}"
    if stride != (1, 1):
        text += f", s{stride[0]}" if stride[0] == stride[1] else f", s{stride[0]}×{stride[1]}"
    if isinstance(padding, str):
        text += f", {padding}" if padding != "valid" else ""
    elif _pair(padding) != (0, 0):
        pad = _pair(padding)
        text += f", p{pad[0]}" if pad[0] == pad[1] else f", p{pad[0]}×{pad[1]}"
    if _pair(dilation) != (1, 1):
        text += f", d{_pair(dilation)[0]}"
    if groups != 1:
        text += f", g{groups}"
    return text


def layer_text(module: nn.Module) -> str:
    """The first label line of a layer: its kind and the settings that shape its output."""
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return _kernel_text("Conv", module.kernel_size, module.stride, module.padding,
                            module.dilation, module.groups)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        name = "MaxPool" if isinstance(module, nn.MaxPool2d) else "AvgPool"
        return _kernel_text(name, module.kernel_size, module.stride or module.kernel_size,
                            module.padding)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = _pair(module.output_size)
        name = "AdaptiveAvgPool" if isinstance(module, nn.AdaptiveAvgPool2d) else "AdaptiveMaxPool"
        return f"{name} → {size[0]}×{size[1]}"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, (nn.Dropout, nn.Dropout2d)) or hasattr(module, "p") and "Dropout" in kind:
        return f"{kind} p={module.p:g}"
    if isinstance(module, nn.LeakyReLU):
        return f"LeakyReLU {module.negative_slope:g}"
    return kind


def _function_box(node) -> tuple[str, str]:
    """(kind, text) of a function or method call in the traced graph."""
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if target in (torch.cat, torch.concat):
        return "concat", "Concat"
    if target in (operator.add, torch.add) or name in ("add", "add_", "__add__", "__iadd__"):
        return "add", "+"
    if target in (operator.mul, torch.mul) or name in ("mul", "mul_"):
        constants = [a for a in node.args if isinstance(a, (int, float))]
        return "scale", f"× {constants[0]:g}" if constants else "×"
    if name in ("flatten", "view", "reshape"):
        return "Flatten", "Flatten"
    if name in ("relu", "relu_"):
        return "ReLU", "ReLU"
    if name in ("adaptive_avg_pool2d", "mean"):
        return "AdaptiveAvgPool", "Global average pool"
    return name, name


def _owner(node) -> tuple:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path in stack if path]
    return tuple(paths[-1].split(".")) if paths else ()


class _Tracer(fx.Tracer):
    """Stops at layers (modules without submodules) and at the block types asked for."""

    def __init__(self, blocks):
        super().__init__(autowrap_functions=(check_images,))
        self.blocks = tuple(blocks)

    def is_leaf_module(self, module, qualified_name):
        if self.blocks and isinstance(module, self.blocks):
            return True
        return next(module.children(), None) is None


def _trace(module, input_shape, blocks, training):
    """The traced graph with shapes, and the kept nodes' predecessor lists."""
    if len(input_shape) != 3:
        raise ValueError(f"input_shape is (channels, height, width) without the batch, "
                         f"for example (1, 28, 28); got {tuple(input_shape)}")
    modes = {m: m.training for m in module.modules()}
    try:
        module.train(training)
        try:
            graph_module = fx.GraphModule(module, _Tracer(blocks).trace(module))
        except (fx.proxy.TraceError, TypeError) as error:
            raise ValueError(
                f"architecture() could not trace {type(module).__name__}: {error}. Its forward "
                "branches on tensor values; pass blocks=(TheBlockClass,) to draw that block "
                "as a single box.") from error
        graph_module.graph.eliminate_dead_code()
        example = torch.zeros(2 if training else 1, *input_shape)
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return graph_module


def _box_for(node, graph_module, block_label) -> Box | None:
    meta = node.meta.get("tensor_meta")
    shape = tuple(meta.shape[1:]) if hasattr(meta, "shape") else None
    if node.op == "placeholder":
        return Box("input", "Input", shape, (), 0)
    if node.op == "output":
        return Box("outputs", "Outputs", None, (), 0)
    if shape is None:
        return None  # sizes, getattr and other non-tensor values are not drawn
    if node.op == "call_module":
        sub = graph_module.get_submodule(node.target)
        owner = tuple(node.target.split("."))
        if next(sub.children(), None) is None:
            return Box(type(sub).__name__, layer_text(sub), shape, owner, 1, repr(sub))
        leaves = sum(1 for m in sub.modules() if next(m.children(), None) is None)
        return Box(type(sub).__name__, block_label(sub, owner[-1]), shape, owner, leaves,
                   repr(sub))
    kind, text = _function_box(node)
    layers = 0 if kind in ("concat", "add", "scale", "Flatten") else 1
    return Box(kind, text, shape, _owner(node) + (f"<{node.name}>",), layers)


def _graph(graph_module, block_label):
    """Boxes of the drawn nodes and, for each, the drawn nodes feeding it."""
    boxes, inputs = {}, {}
    for node in graph_module.graph.nodes:
        box = _box_for(node, graph_module, block_label)
        if box is not None:
            boxes[node] = box
    memo = {}

    def drawn_sources(node):
        if node in boxes:
            return [node]
        if node not in memo:
            found = []
            for source in node.all_input_nodes:
                found += [s for s in drawn_sources(source) if s not in found]
            memo[node] = found
        return memo[node]

    for node in boxes:
        found = []
        for source in node.all_input_nodes:
            found += [s for s in drawn_sources(source) if s not in found]
        inputs[node] = found
    return boxes, inputs


def _series_parallel(boxes, inputs) -> Series:
    """Decompose the DAG into series and parallel parts, using immediate post-dominators."""
    order = list(boxes)
    successors = {n: [] for n in order}
    for node in order:
        for source in inputs[node]:
            successors[source].append(node)
    out = order[-1]
    ipdom, depth = {out: None}, {out: 0}

    def meet(a, b):
        while a is not b:
            if depth[a] >= depth[b]:
                a = ipdom[a]
            else:
                b = ipdom[b]
        return a

    for node in reversed(order[:-1]):
        following = successors[node] or [out]
        common = following[0]
        for other in following[1:]:
            common = meet(common, other)
        ipdom[node], depth[node] = common, depth[common] + 1

    seen = set()

    def series(start, stop):
        items, node = [], start
        while node is not stop:
            if node in seen:
                raise ValueError("the network is not a composition of series and parallel "
                                 "parts; pass blocks=(...) to draw the offending block whole")
            seen.add(node)
            items.append(boxes[node])
            following = successors[node]
            if len(following) <= 1:
                node = following[0] if following else out
                continue
            join = ipdom[node]
            items.append(Parallel(branches(following, join)))
            node = join
        return Series(items)

    def branches(starts, join):
        groups = []
        for start in starts:  # branches that meet before `join` form one nested fork
            for group in groups:
                if meet(group[0], start) is not join:
                    group.append(start)
                    break
            else:
                groups.append([start])
        result = []
        for group in groups:
            if len(group) == 1:
                result.append(series(group[0], join))
                continue
            inner = group[0]
            for other in group[1:]:
                inner = meet(inner, other)
            result.append(Series([Parallel(branches(group, inner))] + series(inner, join).items))
        return result

    root = series(order[0], out)
    if len(inputs[out]) > 1:
        root.items.append(boxes[out])
    return root


def _owner_of(item) -> tuple:
    if isinstance(item, Box):
        return item.owner
    parts = [_owner_of(i) for i in _children(item)]
    parts = [p for p in parts if p]
    if not parts:
        return ()
    common = parts[0]
    for part in parts[1:]:
        n = 0
        while n < min(len(common), len(part)) and common[n] == part[n]:
            n += 1
        common = common[:n]
    return common


def _children(item):
    if isinstance(item, Series):
        return item.items
    if isinstance(item, Parallel):
        return item.branches
    if isinstance(item, Repeat):
        return [item.body]
    return []


def signature(item):
    """What makes two drawn parts the same: kinds, settings and shapes, not module names."""
    if isinstance(item, Box):
        return (item.kind, item.text, item.shape, item.fingerprint)
    if isinstance(item, Series):
        return tuple(signature(i) for i in item.items)
    if isinstance(item, Parallel):
        return ("parallel",) + tuple(signature(b) for b in item.branches)
    return ("repeat", item.times, signature(item.body))


def _collapse(items, level=1):
    """Collapse consecutive sibling modules with the same structure into a Repeat."""
    for item in items:
        if isinstance(item, Parallel):
            item.branches = [Series(_collapse(b.items, level)) for b in item.branches]
    segments = []
    for item in items:
        key = _owner_of(item)[:level]
        if segments and segments[-1][0] == key:
            segments[-1][1].append(item)
        else:
            segments.append((key, [item]))
    parts = []
    for key, segment in segments:
        if len(key) == level and len(segment) > 1:
            segment = _collapse(segment, level + 1)
        parts.append((key, segment))
    result, i = [], 0
    while i < len(parts):
        j = i + 1
        key, segment = parts[i]
        while (len(key) == level and j < len(parts) and len(parts[j][0]) == level
               and signature(Series(parts[j][1])) == signature(Series(segment))):
            j += 1
        if j - i > 1:
            result.append(Repeat(Series(segment), j - i))
        else:
            result.extend(segment)
        i = j
    return result


# ----------------------------------------------------------------------------- drawing

COLOURS = {"conv": "#c6dbef", "pool": "#fdd0a2", "linear": "#dadaeb", "norm": "#c7e9c0",
           "activation": "#f2f2f2", "dropout": "#e5e5e5", "join": "#fff2a8", "input": "#ffffff",
           "block": "#fcd5e5", "other": "#f7f7f7"}
FONT = 7.5          # points
CHAR = 0.062        # inches per character at FONT (a little wider than DejaVu Sans' average)
LINE = 0.15         # inches per text line
GAP = 0.2           # between items along the flow (room for an arrow)
FAN = 0.2           # where branches split and meet
BRANCH_GAP = 0.15   # between parallel branches
PAD = 0.09          # inside a repeat's frame
REPEAT_LABEL = 0.34


def category(box: Box) -> str:
    kind = box.kind
    if kind in JOINS or kind == "scale":
        return "join"
    if kind == "input":
        return "input"
    if "Conv" in kind:
        return "conv"
    if "Pool" in kind:
        return "pool"
    if kind == "Linear":
        return "linear"
    if kind in NORMS:
        return "norm"
    if kind in ACTIVATIONS:
        return "activation"
    if "Dropout" in kind:
        return "dropout"
    if box.layers > 1:
        return "block"
    return "other"


class _Layout:
    """Sizes along the flow ("main") and across it ("cross") in inches, then drawing."""

    def __init__(self, ax, horizontal):
        self.ax, self.horizontal = ax, horizontal

    def box_size(self, box):
        lines = box.label.split("\n")
        if box.kind == "add":
            return 0.26, 0.26
        width = max(len(line) for line in lines) * CHAR + 0.16
        height = len(lines) * LINE + 0.1
        return width, height

    def size(self, item):
        """(main, cross) extent."""
        if isinstance(item, Box):
            width, height = self.box_size(item)
            return (width, height) if self.horizontal else (height, width)
        if isinstance(item, Series):
            sizes = [self.size(i) for i in item.items]
            if not sizes:
                return 0.0, 0.3
            return (sum(s[0] for s in sizes) + GAP * (len(sizes) - 1), max(s[1] for s in sizes))
        if isinstance(item, Parallel):
            sizes = [self.size(b) for b in item.branches]
            return (max(s[0] for s in sizes) + 2 * FAN,
                    sum(s[1] for s in sizes) + BRANCH_GAP * (len(sizes) - 1))
        main, cross = self.size(item.body)
        return main + 2 * PAD, cross + 2 * PAD + REPEAT_LABEL

    def point(self, main, cross):
        return (main, cross) if self.horizontal else (cross, main)

    def line(self, a, b, arrow=False, style="-"):
        patch = FancyArrowPatch(self.point(*a), self.point(*b),
                                arrowstyle="-|>" if arrow else "-", mutation_scale=7,
                                linewidth=0.8, linestyle=style, color="#444444",
                                shrinkA=0, shrinkB=0)
        self.ax.add_patch(patch)

    def draw(self, item, start, centre):
        """Draw ``item`` with its flow starting at ``start``, centred on ``centre``."""
        main, cross = self.size(item)
        if isinstance(item, Box):
            self.draw_box(item, start, centre, main, cross)
        elif isinstance(item, Series):
            position = start
            for index, child in enumerate(item.items):
                child_main, _ = self.size(child)
                if index:
                    self.line((position - GAP, centre), (position, centre), arrow=True)
                self.draw(child, position, centre)
                position += child_main + GAP
        elif isinstance(item, Parallel):
            cursor = centre - cross / 2
            end = start + main
            for branch in item.branches:
                branch_main, branch_cross = self.size(branch)
                middle = cursor + branch_cross / 2
                self.line((start, centre), (start + FAN, middle))
                if branch.items:
                    self.draw(branch, start + FAN, middle)
                    self.line((start + FAN + branch_main, middle), (end - FAN, middle))
                else:
                    self.line((start + FAN, middle), (end - FAN, middle), style="--")
                    self.text(start + main / 2, middle, "identity", italic=True)
                self.line((end - FAN, middle), (end, centre))
                cursor += branch_cross + BRANCH_GAP
        else:
            body_main, body_cross = self.size(item.body)
            low = centre - cross / 2
            body_centre = low + PAD + body_cross / 2
            self.draw(item.body, start + PAD, body_centre)
            x, y = self.point(start, low)
            w, h = (main, body_cross + 2 * PAD) if self.horizontal else (body_cross + 2 * PAD, main)
            self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                             fill=False, linestyle="--", linewidth=0.8,
                                             edgecolor="#777777"))
            self.text(start + main / 2, low + body_cross + 2 * PAD + REPEAT_LABEL / 2,
                      f"× {item.times}", bold=True)

    def text(self, main, cross, text, italic=False, bold=False):
        x, y = self.point(main, cross)
        self.ax.text(x, y, text, ha="center", va="center", fontsize=FONT - 0.5,
                     style="italic" if italic else "normal",
                     weight="bold" if bold else "normal", color="#333333",
                     bbox=dict(facecolor="white", edgecolor="none", pad=0.5) if italic else None)

    def draw_box(self, box, start, centre, main, cross):
        if box.kind == "add":
            x, y = self.point(start + main / 2, centre)
            self.ax.add_patch(Circle((x, y), 0.13, facecolor=COLOURS["join"],
                                     edgecolor="#444444", linewidth=0.8))
            self.ax.text(x, y, "+", ha="center", va="center", fontsize=FONT + 2)
            return
        width, height = (main, cross) if self.horizontal else (cross, main)
        x, y = self.point(start, centre - cross / 2)
        self.ax.add_patch(FancyBboxPatch(
            (x, y), width, height, boxstyle="round,pad=0,rounding_size=0.04",
            facecolor=COLOURS[category(box)], edgecolor="#555555", linewidth=0.7))
        cx, cy = x + width / 2, y + height / 2
        if box.shape:
            self.ax.text(cx, cy - LINE / 2, box.text, ha="center", va="center", fontsize=FONT)
            self.ax.text(cx, cy + LINE / 2, _shape_text(box.shape), ha="center", va="center",
                         fontsize=FONT - 0.5, color="#555555")
        else:
            self.ax.text(cx, cy, box.text, ha="center", va="center", fontsize=FONT)


@dataclass
class Diagram:
    """A drawn architecture: the figure and the structure it shows."""

    figure: Figure
    parts: list  # of (title, Series)

    def _walk(self, item, times, found):
        if isinstance(item, Box):
            found.append((item, times))
        elif isinstance(item, Repeat):
            self._walk(item.body, times * item.times, found)
        else:
            for child in _children(item):
                self._walk(child, times, found)
        return found

    def boxes(self, part: int = 0) -> list[tuple[Box, int]]:
        """Every drawn box with how many times it stands repeated ("x n" frames)."""
        return self._walk(self.parts[part][1], 1, [])

    def layer_count(self, part: int = 0) -> int:
        """Layers the drawing stands for: boxes times their repeats (blocks: all inside)."""
        return sum(box.layers * times for box, times in self.boxes(part))

    def parallels(self, part: int = 0) -> list[Parallel]:
        found, stack = [], [self.parts[part][1]]
        while stack:
            item = stack.pop()
            if isinstance(item, Parallel):
                found.append(item)
            stack.extend(_children(item))
        return found

    def repeats(self, part: int = 0) -> list[Repeat]:
        found, stack = [], [self.parts[part][1]]
        while stack:
            item = stack.pop()
            if isinstance(item, Repeat):
                found.append(item)
            stack.extend(_children(item))
        return found

    def _repr_png_(self):
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()


def structure(module: nn.Module, input_shape, *, blocks=(), training=False, collapse=True,
              block_label=None) -> Series:
    """The series/parallel structure :func:`architecture` draws, without drawing it."""
    block_label = block_label or (lambda block, name: type(block).__name__)
    graph_module = _trace(module, tuple(input_shape), blocks, training)
    root = _series_parallel(*_graph(graph_module, block_label))
    if collapse:
        root = Series(_collapse(root.items))
    return root


def compare_architectures(networks: dict, *, horizontal=False, blocks=(), training=False,
                          collapse=True, block_label=None) -> Diagram:
    """Draw several networks side by side: ``{"title": (module, input_shape), ...}``."""
    roots = [(title, structure(module, shape, blocks=blocks, training=training,
                               collapse=collapse, block_label=block_label))
             for title, (module, shape) in networks.items()]
    probe = _Layout(None, horizontal)
    sizes = [probe.size(root) for _, root in roots]
    titled = any(title for title, _ in roots)
    title_room = 0.3 if titled else 0.0
    margin, between = 0.12, 0.35
    if horizontal:  # parts stacked top to bottom, each with its title above it
        main = max(s[0] for s in sizes)
        cross = sum(s[1] + title_room for s in sizes) + between * (len(sizes) - 1)
    else:           # parts side by side, titles along the top
        main = max(s[0] for s in sizes) + title_room
        cross = sum(s[1] for s in sizes) + between * (len(sizes) - 1)
    width, height = (main, cross) if horizontal else (cross, main)
    figure = Figure(figsize=(width + 2 * margin, height + 2 * margin))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(-margin, width + margin)
    ax.set_ylim(height + margin, -margin)
    ax.set_axis_off()
    layout = _Layout(ax, horizontal)
    cursor = 0.0
    for (title, root), (root_main, root_cross) in zip(roots, sizes):
        if horizontal:
            if title:
                ax.text(0, cursor + title_room / 2, title, ha="left", va="center",
                        fontsize=FONT + 2, weight="bold")
            layout.draw(root, 0.0, cursor + title_room + root_cross / 2)
            cursor += title_room + root_cross + between
        else:
            if title:
                ax.text(cursor + root_cross / 2, title_room / 2, title, ha="center",
                        va="center", fontsize=FONT + 2, weight="bold")
            layout.draw(root, title_room, cursor + root_cross / 2)
            cursor += root_cross + between
    return Diagram(figure, roots)


def architecture(module: nn.Module, input_shape, *, title: str | None = None, horizontal=False,
                 blocks=(), training=False, collapse=True, block_label=None) -> Diagram:
    """Draw ``module`` as a diagram, tracing it on an input of ``input_shape`` (C, H, W).

    ``blocks``: module classes drawn as one box each (for a model-level picture), labelled
    ``block_label(block, attribute_name)`` (default: the class name);
    ``training=True`` traces training mode (auxiliary heads appear); ``collapse=False``
    draws repeated blocks one by one; ``horizontal=True`` lets the data flow left to right.
    """
    return compare_architectures({title or "": (module, input_shape)}, horizontal=horizontal,
                                 blocks=blocks, training=training, collapse=collapse,
                                 block_label=block_label)
