"""What the product tells its users about a model, in one place and without torch.

The demo's client and the CLI print these without loading torch (seconds on a small box);
the backends log the same words.
"""

from __future__ import annotations

TINY_WARNING = (
    "using the built-in tiny model (random weights): its images are noise until SD3-medium weights "
    "(a diffusers folder or sd3_medium.safetensors + clip_g + clip_l) are set with model = PATH in "
    "the agent's config, or dedgeai generate --model PATH"
)
