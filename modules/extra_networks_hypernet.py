"""A1111's `modules.extra_networks_hypernet`: the `<hypernet:name:multiplier>` type. Easel's engine
applies hypernetworks itself (modules.services.hypernetworks); this class exists for extensions that
import or subclass it."""

from __future__ import annotations

from modules import extra_networks


class ExtraNetworkHypernet(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("hypernet")

    def activate(self, p, params_list):
        """Applied by the engine from the prompt's tags (nothing to do here)."""

    def deactivate(self, p):
        """See activate."""
