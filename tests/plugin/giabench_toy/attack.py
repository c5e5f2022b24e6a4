"""``toy-row``: a single image read off the first linear layer, x = dL/dW_i / dL/db_i for the row i with the largest
bias gradient (Phong et al. 2018's observation, one row only). Applies to a first linear layer with a bias and to
batch size 1."""

from __future__ import annotations

from torch import nn

from giabench.attacks.analytic import first_layer
from giabench.contracts import Attack, Reconstruction
from giabench.errors import NotApplicable
from giabench.registry import attack


@attack("toy-row")
class ToyRow(Attack):
    """One image from the first linear layer's strongest row (a plugin's attack)."""

    family = "analytic"
    title = "toy row inversion"
    assumes = "a first linear layer with a bias; batch 1"

    def __init__(self, *, rows: int = 1):
        self.rows = rows

    @classmethod
    def for_audit(cls, level, shape):
        return {"rows": 1}

    def applies(self, model, shape, protocol, batch_size):
        _, first = first_layer(model)
        if not isinstance(first, nn.Linear) or first.bias is None:
            return f"toy-row reads a first linear layer with a bias; this one is {type(first).__name__}"
        return None if batch_size == 1 else "toy-row reads one image: it needs batch 1"

    def reconstruct(self, view, simulate, generator, progress=None):
        name, first = first_layer(view.model)
        if not isinstance(first, nn.Linear) or view.batch_size != 1:
            raise NotApplicable(self.applies(view.model, view.shape, view.protocol.name, view.batch_size))
        weight, bias = view.message[f"{name}.weight"].double(), view.message[f"{name}.bias"].double()
        row = int(bias.abs().argmax())
        normalized = (weight[row] / bias[row]).view(1, *view.shape)
        image = (normalized * view.model.std.double() + view.model.mean.double()).float().clamp(0, 1)
        return Reconstruction(image, None, 1)
