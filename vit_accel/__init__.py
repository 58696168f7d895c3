"""Token reduction for timm Vision Transformers: ToMe, GTP, HiRED and dynamic token routing behind one `patch`."""

from vit_accel.patch import METHODS, Undo, is_patched, patch, patch_state, unpatch
from vit_accel.models import AcceleratedViT, AcceleratedViTConfig
from vit_accel._timm import last_info
from vit_accel.flops import LayerMacs, MacReport, count_macs, flop_counter_macs
from vit_accel import presets  # noqa: F401  (registers the named presets)
from vit_accel import trained  # noqa: F401  (registers the bundled digits ViTs)

__all__ = ["METHODS", "AcceleratedViT", "AcceleratedViTConfig", "LayerMacs", "MacReport", "Undo", "count_macs",
           "flop_counter_macs", "is_patched", "last_info", "patch", "patch_state", "unpatch"]
