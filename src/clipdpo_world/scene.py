"""The world's images: seeded scenes of drawn objects with their exact ground truth.

A scene is a background (its image category, Sec. 4.2 of the paper) and 1-3 object groups, each
a kind with a fixed shape, a colour from the kind's two, a count (1 or 2) and one of three slots
(left, middle, right). Some kinds co-occur (PAIRS): the LVLM's training captions will name a
partner that is absent, which is the hallucination CLIP-DPO has to cut. Everything is drawn from
a numpy generator seeded by (world seed, split, index): the same scene on every machine.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 32  # pixels; small so the CLIP and LLaVA towers stay tiny (patch 8 -> 16 patches)
SLOTS = ("left", "middle", "right")
SLOT_X = (2, 12, 22)  # left edge of each slot's 8-pixel column
SINGLE_Y = 12  # top row of a lone object; a pair of copies sits at rows 6 and 18
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "green": (20, 160, 40),
    "yellow": (235, 215, 20),
    "brown": (130, 80, 30),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
    "grey": (120, 120, 120),
}

# kind -> (8x8 shape, its two colours: the first is drawn 3 times in 4). Names are nouns that spaCy
# tags NN and whose word vectors stay far apart (cat/dog share one vector in en_core_web_md, so a
# "dog" would count as covering a "cat" in AMBER; there is no dog here).
_SHAPES = {
    "cat": ("#......#", "##....##", "########", "#.####.#", "########", ".######.", ".######.", ".#....#."),
    "horse": ("......##", ".....###", "########", "#######.", "#######.", ".#....#.", ".#....#.", ".#....#."),
    "ball": ("..####..", ".######.", "########", "########", "########", "########", ".######.", "..####.."),
    "cup": ("........", "######..", "######.#", "######.#", "######.#", "######..", ".####...", "........"),
    "tree": ("...##...", "..####..", ".######.", "########", "...##...", "...##...", "...##...", "..####.."),
    "car": ("........", "..####..", ".######.", "########", "########", "########", ".##..##.", ".##..##."),
    "bird": ("........", "##......", "###...##", ".#######", "..#####.", "...###..", "...#.#..", "........"),
    "house": ("...##...", "..####..", ".######.", "########", ".######.", ".##..##.", ".##..##.", ".######."),
    "chair": ("#.......", "#.......", "#.......", "#.......", "########", "#......#", "#......#", "#......#"),
    "book": ("########", "#......#", "#.####.#", "#......#", "#.####.#", "#......#", "#.####.#", "########"),
    "man": ("...##...", "...##...", ".######.", "#.####.#", "#.####.#", "..#..#..", "..#..#..", ".##..##."),
}
KIND_COLOURS = {
    "cat": ("black", "grey"),
    "horse": ("brown", "white"),
    "ball": ("red", "blue"),
    "cup": ("white", "yellow"),
    "tree": ("green", "brown"),
    "car": ("blue", "red"),
    "bird": ("yellow", "black"),
    "house": ("red", "grey"),
    "chair": ("brown", "black"),
    "book": ("blue", "green"),
    "man": ("black", "blue"),
}
KINDS = tuple(_SHAPES)
PLURALS = {kind: "men" if kind == "man" else kind + "s" for kind in KINDS}
# Kinds that appear together often; an LVLM trained on the world names one when it sees the other.
PAIRS = (("cup", "book"), ("cat", "chair"), ("bird", "tree"), ("car", "house"), ("horse", "ball"))
PARTNER = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}

# background -> image category of the paper's Sec. 4.2 (an image with a man is "people" whatever its background)
BACKGROUNDS = {"plain": "objects", "field": "scenes", "page": "text"}
BACKGROUND_WEIGHTS = {"plain": 0.45, "field": 0.3, "page": 0.25}  # text over-represented, as in web data
BACKGROUND_NOUNS = {"plain": (), "field": ("field",), "page": ("page", "text")}


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn (probabilities of the sampler); part of the world's cache key."""

    pair_probability: float = 0.5  # an image with >= 2 groups starts with a co-occurring pair
    primary_colour_probability: float = 0.75
    two_copies_probability: float = 0.25
    man_weight: float = 0.5  # relative to 1.0 for every other kind
    noise: int = 8  # +- pixel noise, so no two images of the same objects are equal


@dataclass(frozen=True)
class ObjectGroup:
    kind: str
    colour: str
    count: int
    slot: int  # index into SLOTS

    @property
    def position(self) -> str:
        return SLOTS[self.slot]


@dataclass(frozen=True)
class Scene:
    image_id: str
    background: str
    objects: tuple[ObjectGroup, ...]  # sorted by slot, left to right
    glyph_seed: int  # draws the page's printed words

    @property
    def kinds(self) -> list[str]:
        return [group.kind for group in self.objects]

    @property
    def category(self) -> str:
        return "people" if "man" in self.kinds else BACKGROUNDS[self.background]

    @property
    def absent_partners(self) -> list[str]:
        """Partners of the kinds present that are not present: the words the world tempts a model to say."""
        kinds = self.kinds
        return [PARTNER[k] for k in kinds if k in PARTNER and PARTNER[k] not in kinds]

    def to_dict(self) -> dict:
        return {
            "image_id": self.image_id,
            "background": self.background,
            "category": self.category,
            "objects": [
                {"kind": g.kind, "colour": g.colour, "count": g.count, "position": g.position} for g in self.objects
            ],
        }


SPLITS = {"train": 0, "heldout": 1, "pool": 2}


def _pick_kinds(rng: np.random.Generator, n: int, cfg: SceneConfig) -> list[str]:
    weights = np.array([cfg.man_weight if k == "man" else 1.0 for k in KINDS])
    if n >= 2 and rng.random() < cfg.pair_probability:
        pair = list(PAIRS[rng.integers(len(PAIRS))])
        rest = [k for k in KINDS if k not in pair]
        rest_w = np.array([weights[KINDS.index(k)] for k in rest])
        extra = list(rng.choice(rest, size=n - 2, replace=False, p=rest_w / rest_w.sum()))
        kinds = pair + extra
    else:
        kinds = list(rng.choice(KINDS, size=n, replace=False, p=weights / weights.sum()))
    return [str(k) for k in rng.permutation(kinds)]


def sample_scene(seed: int, split: str, index: int, cfg: SceneConfig = SceneConfig()) -> Scene:
    """Scene `index` of `split` in world `seed`; the same arguments give the same scene everywhere."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    names = list(BACKGROUND_WEIGHTS)
    background = names[rng.choice(len(names), p=np.array(list(BACKGROUND_WEIGHTS.values())))]
    n = int(rng.integers(1, len(SLOTS) + 1))
    kinds = _pick_kinds(rng, n, cfg)
    slots = sorted(int(s) for s in rng.choice(len(SLOTS), size=n, replace=False))
    groups = []
    for kind, slot in zip(kinds, slots):
        colour = KIND_COLOURS[kind][0 if rng.random() < cfg.primary_colour_probability else 1]
        count = 2 if rng.random() < cfg.two_copies_probability else 1
        groups.append(ObjectGroup(kind, colour, count, slot))
    return Scene(f"world{seed}-{split}-{index:05d}", background, tuple(groups), int(rng.integers(2**31)))


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    pixels = np.empty((SIZE, SIZE, 3), np.int16)
    if scene.background == "plain":
        pixels[:] = (190, 190, 200)
    elif scene.background == "field":
        pixels[: SIZE // 2] = (140, 190, 235)  # sky
        pixels[SIZE // 2 :] = (95, 130, 70)  # grass
    else:  # page: two lines of printed glyphs (3x3 strokes), above and below the objects
        pixels[:] = (245, 242, 230)
        for top in (1, SIZE - 4):
            for left in range(1, SIZE - 3, 4):
                glyph = rng.random((3, 3)) < 0.55
                pixels[top : top + 3, left : left + 3][glyph] = (20, 20, 20)
    return pixels


def render(scene: Scene, cfg: SceneConfig = SceneConfig()) -> Image.Image:
    """The scene as a SIZE x SIZE RGB image."""
    rng = np.random.default_rng(scene.glyph_seed)
    pixels = _background(scene, rng)
    for group in scene.objects:
        mask = np.array([[c == "#" for c in row] for row in _SHAPES[group.kind]])
        tops = (SINGLE_Y,) if group.count == 1 else (6, 18)
        x = SLOT_X[group.slot]
        for y in tops:
            pixels[y : y + 8, x : x + 8][mask] = COLOURS[group.colour]
    pixels += rng.integers(-cfg.noise, cfg.noise + 1, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
