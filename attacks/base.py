"""The base of the built-in attacks: ``giabench.contracts.Attack`` whose ``labels`` parameter (``known`` or
``inferred[:METHOD]``, see ``giabench.attacks.labels``) adds what it needs to the attack's threat model."""

from __future__ import annotations

from giabench import contracts
from giabench.attacks.labels import requirements as label_needs


class Attack(contracts.Attack):
    def parameter_needs(self) -> set[str]:
        labels = getattr(self, "labels", "")
        if labels == "known":
            return {"labels"}
        if labels.startswith("inferred"):
            return label_needs(labels)
        return set()
