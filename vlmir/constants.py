"""Names shared by every part of vlmir (import-cheap: no torch, no numpy)."""

# DA-CLIP's ten degradation types (its dataset folders), in the order of the original code and its demo output.
DEGRADATIONS: tuple[str, ...] = (
    "motion-blurry",
    "hazy",
    "jpeg-compressed",
    "low-light",
    "noisy",
    "raindrop",
    "rainy",
    "shadowed",
    "snowy",
    "uncompleted",
)

# The label our models may add for an undegraded input.
CLEAR = "clear"

# The classes of our embedded classifier, training labels and classical methods: the ten types, then ``clear``.
DEGRADATIONS_AND_CLEAR: tuple[str, ...] = (*DEGRADATIONS, CLEAR)

# WResVLM's five visibility / quality level words, best first: excellent = 5 ... bad = 1 in r = sum_i i * p_i.
LEVELS: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
