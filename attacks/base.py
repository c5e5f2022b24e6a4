"""The base of the built-in attacks: ``giabench.contracts.Attack`` whose ``labels`` parameter (``known`` or
``inferred[:METHOD]``, see ``giabench.attacks.labels``) adds what it needs to the attack's threat model."""

from __future__ import annotations

from giabench import contracts
from giabench.attacks import labels as label_methods
from giabench.checks import Param

#: the ``labels`` parameter as most attacks document it
LABELS = Param("the dummy batch's labels: known (granted by the threat model) or inferred[:METHOD] from the message, "
               f"METHOD one of {', '.join(label_methods.METHODS)}")


class Attack(contracts.Attack):
    #: label modes besides known and inferred[:METHOD] that the attack accepts (DLG: optimized)
    label_modes: tuple[str, ...] = ()

    @classmethod
    def check(cls, params: dict) -> None:
        super().check(params)
        if "labels" in params:
            label_methods.check(params["labels"], cls.label_modes)

    def parameter_needs(self) -> set[str]:
        labels = getattr(self, "labels", "")
        if labels == "known":
            return {"labels"}
        if labels.startswith("inferred"):
            return label_methods.requirements(labels)
        return set()
