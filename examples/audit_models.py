"""Two practitioners' models for ``giabench audit``, built outside the zoo (README, "Audit your own model").

    giabench audit --model examples.audit_models:mlp_mnist --data mnist-5k --out runs/audit-mlp
    giabench audit --model examples.audit_models:resnet18_cifar --data cifar10-sample --out runs/audit-resnet18
"""

from torch import nn
from torchvision.models import resnet18


def mlp_mnist() -> nn.Module:
    """A fully connected MNIST classifier: 784 -> 256 -> 10 with ReLU (PyTorch's default initialisation)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, 10))


def resnet18_cifar() -> nn.Module:
    """torchvision's ResNet-18 for 10 classes with the usual CIFAR stem: a 3x3 stride-1 first convolution and no
    max-pool (torchvision's initialisation)."""
    net = resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net
