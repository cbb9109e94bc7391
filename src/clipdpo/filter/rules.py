"""The paper's filtering rules (Sec. 4.2) as pure functions over score columns.

Global filtering: down-sample text-category images, drop captions under a CLIP score, drop
captions longer than the CLIP text context, drop generic questions (low image-question
score), drop QA rows whose check caption (description + correct answer) scores low, and keep the
yes/no questions' right answers balanced between "yes" and "no" (ours, below).
Pair filtering: within one image, every caption pair whose score difference exceeds a
margin and whose word counts are similar; rank by difference; keep the top pair(s).

Everything here takes NumPy arrays and returns NumPy arrays: no I/O, no config objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def hash_unit_interval(keys: list[str], seed: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per key: same key, same seed, same number.

    Used for down-sampling so that the choice does not depend on shard order or reruns.
    """
    salt = seed.to_bytes(8, "little", signed=True)
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(key.encode(), digest_size=8, salt=salt[:8].ljust(16, b"\0")).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0**64
    return out


def downsample_mask(
    image_ids: np.ndarray, categories: np.ndarray, category: str, keep_fraction: float, seed: int
) -> np.ndarray:
    """True for rows to keep: every row of other categories, a `keep_fraction` of `category` images.

    Decided per image (all of an image's rows share the decision).
    """
    distinct, codes = np.unique(image_ids, return_inverse=True)
    return downsample_mask_by_code(codes, distinct.tolist, categories == category, keep_fraction, seed)


def downsample_mask_by_code(
    image_codes: np.ndarray, distinct_ids, in_category: np.ndarray, keep_fraction: float, seed: int
) -> np.ndarray:
    """`downsample_mask` for rows given as codes into distinct ids (`distinct_ids()` lists them).

    Only the ids of images in the category are hashed, each once.
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    keep = np.ones(len(image_codes), dtype=bool)
    if keep_fraction >= 1.0 or not in_category.any():
        return keep
    codes = np.unique(image_codes[in_category])
    ids = distinct_ids()
    keep_code = np.ones(len(ids), dtype=bool)
    keep_code[codes] = hash_unit_interval([ids[c] for c in codes], seed) < keep_fraction
    keep[in_category] = keep_code[image_codes[in_category]]
    return keep


def at_least(values: np.ndarray, threshold: float) -> np.ndarray:
    """values >= threshold; NaN (no score) fails."""
    with np.errstate(invalid="ignore"):
        return np.asarray(values >= threshold) & ~np.isnan(values)


def fits_context(token_counts: np.ndarray, context_lengths: np.ndarray) -> np.ndarray:
    """True where the text fits CLIP's context whole (counts include start/end tokens)."""
    return token_counts <= context_lengths


def length_ratio(words_a: np.ndarray, words_b: np.ndarray) -> np.ndarray:
    """shorter / longer word count; 0 when either text is empty."""
    shorter = np.minimum(words_a, words_b).astype(np.float64)
    longer = np.maximum(words_a, words_b).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(longer > 0, shorter / longer, 0.0)
    return ratio


@dataclass(frozen=True)
class CaptionPairs:
    """Selected pairs as row indices into the arrays given to `select_caption_pairs`."""

    chosen: np.ndarray
    rejected: np.ndarray
    margin: np.ndarray


def select_caption_pairs(
    group: np.ndarray,
    score: np.ndarray,
    n_words: np.ndarray,
    *,
    min_margin: float,
    min_length_ratio: float,
    pairs_per_group: int = 1,
) -> CaptionPairs:
    """Best caption pairs per group (image).

    A pair (a, b) of one group qualifies when |score_a - score_b| > min_margin and
    length_ratio >= min_length_ratio. Qualifying pairs are ranked by the difference, largest
    first; ties go to the earlier rows. The top `pairs_per_group` of each group are returned
    with the higher-scoring caption as chosen. Cost is linear in the number of candidate pairs.
    """
    n = len(group)
    empty = CaptionPairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
    if n < 2:
        return empty
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    sizes = np.diff(np.r_[starts, n])
    pos_in_group = np.arange(n) - np.repeat(starts, sizes)
    size_of_row = np.repeat(sizes, sizes)

    first_parts, second_parts = [], []
    for offset in range(1, int(sizes.max())):
        left = np.flatnonzero(pos_in_group + offset < size_of_row)
        first_parts.append(order[left])
        second_parts.append(order[left + offset])
    if not first_parts:
        return empty
    a = np.concatenate(first_parts)
    b = np.concatenate(second_parts)
    diff = score[a].astype(np.float64) - score[b].astype(np.float64)
    margin = np.abs(diff)
    ok = (margin > min_margin) & (length_ratio(n_words[a], n_words[b]) >= min_length_ratio)
    a, b, diff, margin = a[ok], b[ok], diff[ok], margin[ok]
    if len(a) == 0:
        return empty
    chosen = np.where(diff >= 0, a, b)
    rejected = np.where(diff >= 0, b, a)
    pair_group = group[a]
    # Rank: group, then margin descending, then earliest rows (deterministic ties).
    rank_order = np.lexsort((np.maximum(a, b), np.minimum(a, b), -margin, pair_group))
    ranked_group = pair_group[rank_order]
    pair_starts = np.flatnonzero(np.r_[True, ranked_group[1:] != ranked_group[:-1]])
    pair_sizes = np.diff(np.r_[pair_starts, len(rank_order)])
    rank_in_group = np.arange(len(rank_order)) - np.repeat(pair_starts, pair_sizes)
    keep = rank_order[rank_in_group < pairs_per_group]
    keep = keep[np.argsort(pair_group[keep], kind="stable")]
    return CaptionPairs(chosen[keep], rejected[keep], margin[keep])


def yes_no_polarity(answers: list[str | None]) -> np.ndarray:
    """+1 where an answer says yes ("Yes", "yes, there is ..."), -1 where it says no, 0 otherwise: by its first
    word, case and trailing punctuation ignored."""
    out = np.zeros(len(answers), dtype=np.int8)
    for i, answer in enumerate(answers):
        words = (answer or "").strip().split(maxsplit=1)
        first = words[0].strip(".,!;:").lower() if words else ""
        out[i] = 1 if first == "yes" else -1 if first == "no" else 0
    return out


def balance_yes_no_mask(polarity: np.ndarray, keys: list[str], max_ratio: float, seed: int) -> np.ndarray:
    """True for rows to keep so that the majority side of the yes/no rows (polarity +1 or -1) is at most
    `max_ratio` times the minority side; rows of polarity 0 are all kept. Which majority rows stay: those whose
    keys hash lowest (`hash_unit_interval`), so the choice does not depend on row order. `max_ratio` 0: no limit.

    Why: pairs whose right answer is mostly "No" (an LLM's wrong answers to "Is there a ...?" are mostly about
    absent objects) teach a prior for "No" as much as what the image shows; balanced positive and negative
    instructions are LRV-Instruction's remedy for LVLMs' answer bias (Liu et al. 2023, "Mitigating Hallucination
    in Large Multi-Modal Models via Robust Instruction Tuning")."""
    keep = np.ones(len(polarity), dtype=bool)
    yes, no = np.flatnonzero(polarity > 0), np.flatnonzero(polarity < 0)
    if max_ratio <= 0:
        return keep
    majority, minority = (yes, no) if len(yes) > len(no) else (no, yes)
    allowed = int(np.floor(max_ratio * len(minority)))
    if len(majority) <= allowed:
        return keep
    ranks = np.argsort(hash_unit_interval([keys[i] for i in majority], seed), kind="stable")
    keep[majority[ranks[allowed:]]] = False
    return keep
