"""Every reference number the course quotes, in one place, with its source.

    python -m utils.references          # rewrites REFERENCES.md from this module
    python -m utils.references --check  # exits 1 when REFERENCES.md is out of date

Notebooks, chapter 10 and the tests read numbers from here (``references.value(key)``),
so a number quoted in a lesson and the number a test checks are the same number. Papers'
ImageNet errors always carry their evaluation protocol: single crop, 10 crops, 144 crops,
dense or multi-scale evaluation, validation or test set. Two errors measured under
different protocols are not comparable, and :func:`paper_errors` says which is which.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = ROOT / "REFERENCES.md"


@dataclass(frozen=True)
class Reference:
    key: str            # e.g. "alexnet.grouped.params"
    value: float        # the number (an int where it is a count)
    unit: str           # "parameters", "GMACs", "% top-5 error", ...
    what: str           # what was measured or counted
    source: str         # paper (authors, year, table) or library and version
    section: str        # where it is listed in REFERENCES.md
    protocol: str = ""  # for ImageNet errors: crops, scales, split


SECTIONS = {
    "configs": "Parameters and multiply-adds of ImageNet configurations (3 channels, 1000 classes)",
    "fashion": "Fashion-MNIST: the book's models and results",
    "errors": "Papers' ImageNet errors (with the evaluation protocol)",
    "papers": "Architecture and training facts from the papers",
    "arithmetic": "Worked arithmetic quoted in the lessons",
}

_TV, _TIMM = "torchvision 0.2x model metadata (num_params, GFLOPS = GMACs)", "timm 1.0"
_V3_VAL = "ILSVRC-2012 validation set (48,238 non-blacklisted images)"  # Inception-v3 paper, Table 4
_D2L = "Dive into Deep Learning, Chinese edition d2l-zh 2.0.0, train_ch6, 10 epochs, one V100"
_ILSVRC12_VAL = "ILSVRC-2012 validation set"


def _book_results():
    """The book's printed results after 10 epochs, one Reference per number."""
    runs = (("lenet", "LeNet, 28 px, lr 0.9, batch 256", (0.469, 0.823, 0.779, 55_297)),
            ("alexnet", "AlexNet, 224 px, lr 0.01, batch 128", (0.331, 0.878, 0.883, 3_942)),
            ("vgg11_w4", "VGG-11 at 1/4 width, 224 px, lr 0.05, batch 128",
             (0.178, 0.935, 0.920, 2_464)),
            ("nin", "NiN, 224 px, lr 0.1, batch 128", (0.563, 0.786, 0.790, 3_088)),
            ("googlenet", "GoogLeNet, 96 px, lr 0.1, batch 128", (0.262, 0.900, 0.886, 3_266)),
            ("bn_lenet", "BN-LeNet from scratch, 28 px, lr 1.0, batch 256",
             (0.273, 0.899, 0.807, 32_294)),
            ("resnet18", "ResNet-18, 96 px, lr 0.05, batch 256", (0.012, 0.997, 0.893, 5_033)))
    metrics = (("train_loss", "loss", "training loss after 10 epochs"),
               ("train_acc", "accuracy", "training accuracy"),
               ("test_acc", "accuracy", "test accuracy"),
               ("examples_per_s", "examples/s", "training examples per second (step only)"))
    return tuple(Reference(f"d2l.{name}.{metric}", number, unit, f"{label}: {what}", _D2L,
                           "fashion")
                 for name, label, numbers in runs
                 for (metric, unit, what), number in zip(metrics, numbers))


REFERENCES: tuple[Reference, ...] = (
    # ----------------------------------------------------------------- configurations
    Reference("alexnet.grouped.params", 60_965_224, "parameters",
              "AlexNet as in the paper: two-GPU groups in conv2, conv4 and conv5, 227 px",
              "Krizhevsky et al. 2012, Figure 2; counted", "configs"),
    Reference("alexnet.grouped.gmacs", 0.724, "GMACs", "the same network, one 227 px image",
              "Krizhevsky et al. 2012; counted", "configs"),
    Reference("alexnet.ungrouped.params", 62_378_344, "parameters",
              "AlexNet's layout with the groups merged (one GPU), 6x6x256 into fc6, 227 px",
              "counted from Krizhevsky et al. 2012", "configs"),
    Reference("alexnet.ungrouped.gmacs", 1.135, "GMACs", "the same network, one 227 px image",
              "counted", "configs"),
    Reference("alexnet.torchvision.params", 61_100_840, "parameters",
              "torchvision's AlexNet (the 'one weird trick' variant: 64 channels first)",
              _TV, "configs"),
    Reference("alexnet.torchvision.gmacs", 0.714, "GMACs", "torchvision's AlexNet at 224 px",
              _TV, "configs"),
    Reference("vgg11.params", 132_863_336, "parameters", "VGG-11 (configuration A)", _TV, "configs"),
    Reference("vgg11.gmacs", 7.609, "GMACs", "VGG-11 at 224 px", _TV, "configs"),
    Reference("vgg16.params", 138_357_544, "parameters", "VGG-16 (configuration D)", _TV, "configs"),
    Reference("vgg16.gmacs", 15.470, "GMACs", "VGG-16 at 224 px", _TV, "configs"),
    Reference("vgg19.params", 143_667_240, "parameters", "VGG-19 (configuration E)", _TV, "configs"),
    Reference("vgg19.gmacs", 19.632, "GMACs", "VGG-19 at 224 px", _TV, "configs"),
    Reference("googlenet.paper.params", 6_998_552, "parameters",
              "GoogLeNet as in Table 1 (5x5 branch, conv biases, no BN, no auxiliary heads)",
              "counted from Szegedy et al. 2015, Table 1", "configs"),
    Reference("googlenet.paper.gmacs", 1.583, "GMACs", "the same network at 224 px",
              "counted from Szegedy et al. 2015, Table 1", "configs"),
    Reference("googlenet.torchvision.params", 6_624_904, "parameters",
              "torchvision's GoogLeNet (BN, a 3x3 conv where the paper has 5x5)", _TV, "configs"),
    Reference("googlenet.torchvision.gmacs", 1.498, "GMACs", "torchvision's GoogLeNet at 224 px",
              _TV, "configs"),
    Reference("resnet18.params", 11_689_512, "parameters", "ResNet-18", _TV, "configs"),
    Reference("resnet18.gmacs", 1.814, "GMACs", "ResNet-18 at 224 px", _TV, "configs"),
    Reference("resnet34.params", 21_797_672, "parameters", "ResNet-34", _TV, "configs"),
    Reference("resnet34.gmacs", 3.664, "GMACs", "ResNet-34 at 224 px", _TV, "configs"),
    Reference("resnet50.params", 25_557_032, "parameters",
              "ResNet-50 (torchvision's 'v1.5': stride in the 3x3 conv)", _TV, "configs"),
    Reference("resnet50.gmacs", 4.089, "GMACs", "ResNet-50 at 224 px", _TV, "configs"),
    Reference("inception_v3.params", 23_834_568, "parameters",
              "Inception-v3 without the auxiliary head", f"{_TV}; {_TIMM}", "configs"),
    Reference("inception_v3.aux.params", 27_161_264, "parameters",
              "Inception-v3 with the auxiliary head", _TV, "configs"),
    Reference("inception_v3.gmacs", 5.713, "GMACs", "Inception-v3 at 299 px", _TV, "configs"),
    Reference("inception_v4.params", 42_679_816, "parameters", "Inception-v4",
              f"{_TIMM} inception_v4", "configs"),
    Reference("inception_v4.gmacs", 12.28, "GMACs", "Inception-v4 at 299 px",
              f"{_TIMM} inception_v4", "configs"),
    Reference("inception_resnet_v2.params", 55_843_464, "parameters",
              "Inception-ResNet-v2 (TF-slim layout)", f"{_TIMM} inception_resnet_v2", "configs"),
    Reference("inception_resnet_v2.gmacs", 13.18, "GMACs", "Inception-ResNet-v2 at 299 px",
              f"{_TIMM} inception_resnet_v2", "configs"),
    # ----------------------------------------------------------------- Fashion-MNIST
    Reference("d2l.alexnet.params", 46_764_746, "parameters",
              "the book's AlexNet for Fashion-MNIST (1 channel, 10 classes, 224 px)",
              "Dive into Deep Learning, AlexNet section; counted", "fashion"),
    Reference("d2l.googlenet.params", 5_977_530, "parameters",
              "the book's GoogLeNet for Fashion-MNIST (1 channel, 10 classes)",
              "Dive into Deep Learning, GoogLeNet section; counted", "fashion"),
    *_book_results(),
    Reference("fashion.human", 0.835, "accuracy", "human accuracy on Fashion-MNIST",
              "zalandoresearch/fashion-mnist README, benchmark", "fashion"),
    Reference("fashion.resnet18_augmented", 0.949, "accuracy",
              "ResNet-18 with augmentation on Fashion-MNIST",
              "zalandoresearch/fashion-mnist README, benchmark", "fashion"),
    Reference("fashion.wrn40_4", 0.967, "accuracy", "WRN-40-4 on Fashion-MNIST",
              "zalandoresearch/fashion-mnist README, benchmark", "fashion"),
    # ----------------------------------------------------------------- papers' errors
    Reference("alexnet.top1", 40.7, "% top-1 error", "AlexNet, one CNN",
              "Krizhevsky et al. 2012, Table 2", "errors",
              f"{_ILSVRC12_VAL}; 10 crops (4 corners + centre, and their flips) averaged"),
    Reference("alexnet.top5", 18.2, "% top-5 error", "AlexNet, one CNN",
              "Krizhevsky et al. 2012, Table 2", "errors",
              f"{_ILSVRC12_VAL}; 10 crops averaged"),
    Reference("vgg16.top1", 25.6, "% top-1 error", "VGG-16 (D), trained with scale jittering",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg16.top5", 8.1, "% top-5 error", "VGG-16 (D), trained with scale jittering",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("googlenet.top5.1crop", 10.07, "% top-5 error", "GoogLeNet, one model",
              "Szegedy et al. 2015, Table 3", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("googlenet.top5.10crop", 9.15, "% top-5 error", "GoogLeNet, one model",
              "Szegedy et al. 2015, Table 3", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("googlenet.top5.144crop", 7.89, "% top-5 error", "GoogLeNet, one model",
              "Szegedy et al. 2015, Table 3", "errors", f"{_ILSVRC12_VAL}; 144 crops"),
    Reference("bn_inception.top1", 25.2, "% top-1 error", "BN-Inception, one model",
              "Ioffe & Szegedy 2015, Table 3", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("bn_inception.top5", 7.82, "% top-5 error", "BN-Inception, one model",
              "Ioffe & Szegedy 2015, Table 3", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("inception_v3.top1", 21.2, "% top-1 error", "Inception-v3, one model",
              "Szegedy et al. 2016", "errors", f"{_ILSVRC12_VAL}; 1 crop, 299 px"),
    Reference("inception_v3.top5", 5.6, "% top-5 error", "Inception-v3, one model",
              "Szegedy et al. 2016", "errors", f"{_ILSVRC12_VAL}; 1 crop, 299 px"),
    Reference("inception_v4.top1", 20.0, "% top-1 error", "Inception-v4, one model",
              "Szegedy et al. 2017, Table 2", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("inception_v4.top5", 5.0, "% top-5 error", "Inception-v4, one model",
              "Szegedy et al. 2017, Table 2", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("inception_resnet_v1.top1", 21.3, "% top-1 error", "Inception-ResNet-v1",
              "Szegedy et al. 2017, Table 2", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("inception_resnet_v1.top5", 5.5, "% top-5 error", "Inception-ResNet-v1",
              "Szegedy et al. 2017, Table 2", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("inception_resnet_v2.top1", 19.9, "% top-1 error", "Inception-ResNet-v2",
              "Szegedy et al. 2017, Table 2", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("inception_resnet_v2.top5", 4.9, "% top-5 error", "Inception-ResNet-v2",
              "Szegedy et al. 2017, Table 2", "errors", f"{_ILSVRC12_VAL}; 1 crop"),
    Reference("resnet18.top1", 27.88, "% top-1 error", "ResNet-18",
              "He et al. 2016, Table 2", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("resnet34.top1", 24.52, "% top-1 error",
              "ResNet-34, option B (projections only where the shape changes)",
              "He et al. 2016, Table 3", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("resnet34.top5", 7.46, "% top-5 error", "ResNet-34, option B",
              "He et al. 2016, Table 3", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("resnet34_a.top1", 25.03, "% top-1 error", "ResNet-34, option A (zero-padding)",
              "He et al. 2016, Table 3", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("resnet34_c.top1", 24.19, "% top-1 error",
              "ResNet-34, option C (projections everywhere)",
              "He et al. 2016, Table 3", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("resnet50.top1", 22.85, "% top-1 error", "ResNet-50",
              "He et al. 2016, Table 3", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("resnet50.top5", 6.71, "% top-5 error", "ResNet-50",
              "He et al. 2016, Table 3", "errors", f"{_ILSVRC12_VAL}; 10 crops"),
    Reference("prelu_net.top5", 4.94, "% top-5 error", "PReLU-net, several models",
              "He et al. 2015 (Delving deep into rectifiers)", "errors",
              "ILSVRC-2012 test set; multi-model, multi-scale"),
    # ----------------------------------------------------------------- architecture facts
    Reference("inception_v3.recipe.rmsprop_decay", 0.9, "", "Inception-v3 RMSProp decay",
              "Szegedy et al. 2016, Sec. 8; TensorFlow's released training", "papers"),
    Reference("inception_v3.recipe.rmsprop_eps", 1.0, "", "Inception-v3 RMSProp epsilon",
              "Szegedy et al. 2016, Sec. 8", "papers"),
    Reference("inception_v3.recipe.momentum", 0.9, "",
              "Inception-v3 RMSProp momentum (TensorFlow's released recipe)",
              "TensorFlow models, inception_train", "papers"),
    Reference("inception_v3.recipe.lr", 0.045, "", "Inception-v3 learning rate",
              "Szegedy et al. 2016, Sec. 8", "papers"),
    Reference("inception_v3.recipe.lr_decay", 0.94, "", "decay factor every two epochs",
              "Szegedy et al. 2016, Sec. 8", "papers"),
    Reference("inception_v3.recipe.clip", 2.0, "", "gradient clipping threshold",
              "Szegedy et al. 2016, Sec. 8", "papers"),
    Reference("inception_v3.recipe.label_smoothing", 0.1, "", "label smoothing epsilon",
              "Szegedy et al. 2016, Sec. 7", "papers"),
    Reference("bn_inception.paper.params", 13.6e6, "parameters",
              "the BN paper's Inception variant", "Ioffe & Szegedy 2015, Sec. 4.2", "papers"),
    Reference("inception_resnet.scale_low", 0.1, "", "residual scaling, lower end",
              "Szegedy et al. 2017, Sec. 3.3", "papers"),
    Reference("inception_resnet.scale_high", 0.3, "", "residual scaling, upper end",
              "Szegedy et al. 2017, Sec. 3.3", "papers"),
    Reference("googlenet.top5.ensemble", 6.67, "% top-5 error", "GoogLeNet, 7 models",
              "Szegedy et al. 2015, Tables 2 and 3", "errors",
              "ILSVRC-2014 test set; 7 models x 144 crops"),
    Reference("vgg11.top1", 29.6, "% top-1 error", "VGG-11 (A), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg11.top5", 10.4, "% top-5 error", "VGG-11 (A), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg13.top1", 28.7, "% top-1 error", "VGG-13 (B), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg13.top5", 9.9, "% top-5 error", "VGG-13 (B), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vggC.s256.top1", 28.1, "% top-1 error", "VGG config C (1x1 convs), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vggC.s256.top5", 9.4, "% top-5 error", "VGG config C (1x1 convs), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg16.s256.top1", 27.0, "% top-1 error", "VGG-16 (D), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg16.s256.top5", 8.8, "% top-5 error", "VGG-16 (D), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg19.s256.top1", 27.3, "% top-1 error", "VGG-19 (E), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg19.s256.top5", 9.0, "% top-5 error", "VGG-19 (E), trained at fixed scale S=256",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vggC.top1", 27.3, "% top-1 error", "VGG config C, trained with scale jittering S in [256, 512]",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vggC.top5", 8.8, "% top-5 error", "VGG config C, trained with scale jittering S in [256, 512]",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg19.top1", 25.5, "% top-1 error", "VGG-19 (E), trained with scale jittering S in [256, 512]",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg19.top5", 8.0, "% top-5 error", "VGG-19 (E), trained with scale jittering S in [256, 512]",
              "Simonyan & Zisserman 2015, Table 3", "errors",
              f"{_ILSVRC12_VAL}; dense evaluation at one test scale"),
    Reference("vgg.shallow_5x5.top1_gap", 7, "% higher top-1 error",
              "B with each pair of 3x3 convs replaced by one 5x5, minus B (shallow net is worse)",
              "Simonyan & Zisserman 2015, Sec. 4.1", "papers",
              f"{_ILSVRC12_VAL}; centre crop"),
    Reference("decade.1970.data", 1e+02, "samples", "typical data set of the 1970s (Iris)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1970.memory", 1e+03, "bytes", "typical computer memory (RAM) of the 1970s", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1970.compute", 1e+05, "FLOPS", "floating-point operations per second of the 1970s (Intel 8080)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1980.data", 1e+03, "samples", "typical data set of the 1980s (house prices in Boston)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1980.memory", 1e+05, "bytes", "typical computer memory (RAM) of the 1980s", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1980.compute", 1e+06, "FLOPS", "floating-point operations per second of the 1980s (Intel 80186)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1990.data", 1e+04, "samples", "typical data set of the 1990s (optical character recognition)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1990.memory", 1e+07, "bytes", "typical computer memory (RAM) of the 1990s", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.1990.compute", 1e+07, "FLOPS", "floating-point operations per second of the 1990s (Intel 80486)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2000.data", 1e+07, "samples", "typical data set of the 2000s (web pages)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2000.memory", 1e+08, "bytes", "typical computer memory (RAM) of the 2000s", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2000.compute", 1e+09, "FLOPS", "floating-point operations per second of the 2000s (Intel Core)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2010.data", 1e+10, "samples", "typical data set of the 2010s (advertising)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2010.memory", 1e+09, "bytes", "typical computer memory (RAM) of the 2010s", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2010.compute", 1e+12, "FLOPS", "floating-point operations per second of the 2010s (Nvidia C2050)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2020.data", 1e+12, "samples", "typical data set of the 2020s (social network)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2020.memory", 1e+11, "bytes", "typical computer memory (RAM) of the 2020s", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("decade.2020.compute", 1e+15, "FLOPS", "floating-point operations per second of the 2020s (Nvidia DGX-2)", "Dive into Deep Learning, Sec. 1.5 (Table 1.5.1)", "papers"),
    Reference("inception_v3.top1.12crop", 19.47, "% top-1 error", "Inception-v3, one model",
              "Szegedy et al. 2016, Table 4", "errors",
              _V3_VAL + "; 12 crops"),
    Reference("inception_v3.top5.12crop", 4.48, "% top-5 error", "Inception-v3, one model",
              "Szegedy et al. 2016, Table 4", "errors",
              _V3_VAL + "; 12 crops"),
    Reference("inception_v3.top1.144crop", 18.77, "% top-1 error", "Inception-v3, one model",
              "Szegedy et al. 2016, Table 4", "errors",
              _V3_VAL + "; 144 crops"),
    Reference("inception_v3.top5.144crop", 4.2, "% top-5 error", "Inception-v3, one model",
              "Szegedy et al. 2016, Table 4", "errors",
              _V3_VAL + "; 144 crops"),
    Reference("inception_v3.ensemble.top1", 17.2, "% top-1 error", "Inception-v3, 4 models",
              "Szegedy et al. 2016, Table 5", "errors",
              "ILSVRC-2012 validation set; 4 models x 144 crops"),
    Reference("inception_v3.ensemble.top5", 3.58, "% top-5 error", "Inception-v3, 4 models",
              "Szegedy et al. 2016, Table 5", "errors",
              "ILSVRC-2012 test set; 4 models x 144 crops"),
    Reference("inception_v3.ensemble.top5.val", 3.46, "% top-5 error", "Inception-v3, 4 models",
              "Szegedy et al. 2016, Table 5 (footnote)", "errors",
              "ILSVRC-2012 validation set; 4 models x 144 crops"),
    Reference("resnext50.params", 25_028_904, "parameters", "ResNeXt-50 (32x4d)", _TV, "configs"),
    Reference("resnext50.gmacs", 4.23, "GMACs", "ResNeXt-50 (32x4d) at 224 px", _TV, "configs"),
    Reference("resnext50.top1", 22.2, "% top-1 error", "ResNeXt-50 (32x4d)",
              "Xie et al. 2017, Table 3", "errors", f"{_ILSVRC12_VAL}; one 224x224 crop"),
    Reference("resnext.resnet50.top1", 23.9, "% top-1 error",
              "ResNet-50 (1x64d) trained with ResNeXt's recipe", "Xie et al. 2017, Table 3",
              "errors", f"{_ILSVRC12_VAL}; one 224x224 crop"),
    # ----------------------------------------------------------------- arithmetic
    Reference("vgg.fc6.weights", 102_760_448, "weights", "VGG's first FC layer, 512*7*7*4096",
              "arithmetic", "arithmetic"),
    Reference("alexnet.fc6.weights", 26_214_400, "weights",
              "the book's AlexNet (224 px) first FC layer, 256*5*5*4096", "arithmetic",
              "arithmetic"),
    Reference("inception3a.params", 163_696, "parameters",
              "Inception block 3a with biases (163,328 without)", "counted", "arithmetic"),
    Reference("inception3a.mmacs", 128, "M multiply-adds", "Inception block 3a at 28x28",
              "counted", "arithmetic"),
)

_BY_KEY = {ref.key: ref for ref in REFERENCES}


def get(key: str) -> Reference:
    """The reference stored under ``key``; a clear error lists close keys when it is unknown."""
    try:
        return _BY_KEY[key]
    except KeyError:
        stem = key.split(".")[0]
        close = [k for k in _BY_KEY if k.startswith(stem)] or sorted(_BY_KEY)[:10]
        raise KeyError(f"no reference {key!r}; keys starting like it: {', '.join(close)}") from None


def value(key: str):
    """The number stored under ``key`` (an ``int`` for counts)."""
    number = get(key).value
    return int(number) if float(number).is_integer() and get(key).unit in (
        "parameters", "weights") else number


def paper_errors(model: str) -> dict:
    """``{"top1": Reference | None, "top5": Reference | None}`` for a model key prefix."""
    return {k: _BY_KEY.get(f"{model}.{k}") for k in ("top1", "top5")}


def _cell(number, unit) -> str:
    if unit in ("parameters", "weights", "examples/s") and float(number).is_integer():
        return f"{int(number):,}"
    return f"{number:g}"


def markdown() -> str:
    """REFERENCES.md, generated from :data:`REFERENCES`."""
    lines = ["# References", "",
             "Every number the course quotes, with its source. Generated from "
             "`utils/references.py` by `python -m utils.references`; edit that file, not this "
             "one. MACs are multiply-accumulates (torchvision's \"GFLOPS\" metadata counts "
             "MACs); FLOPs = 2 x MACs. ImageNet errors name their evaluation protocol: errors "
             "under different protocols are not comparable.", ""]
    for section, title in SECTIONS.items():
        refs = [ref for ref in REFERENCES if ref.section == section]
        lines += [f"## {title}", ""]
        protocol = any(ref.protocol for ref in refs)
        head = "| key | value | unit | what | source |" + (" protocol |" if protocol else "")
        lines += [head, "|" + "---|" * (6 if protocol else 5)]
        for ref in refs:
            row = (f"| `{ref.key}` | {_cell(ref.value, ref.unit)} | {ref.unit} | {ref.what} | "
                   f"{ref.source} |")
            lines.append(row + (f" {ref.protocol} |" if protocol else ""))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if REFERENCES.md is stale")
    args = parser.parse_args(argv)
    text = markdown()
    if args.check:
        if not MARKDOWN.exists() or MARKDOWN.read_text(encoding="utf-8") != text:
            print("REFERENCES.md is out of date: run python -m utils.references")
            return 1
        return 0
    MARKDOWN.write_text(text, encoding="utf-8")
    print(f"wrote {MARKDOWN.relative_to(ROOT)} ({len(REFERENCES)} references)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
