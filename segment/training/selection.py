"""Choosing among epochs and mask settings on a few held-out groups without chasing noise.

The best of many choices scored on a few groups is partly the luckiest: its score flatters it,
and the choice may be worse on the next group than a plainer one. A choice is kept only when
it beats the plainer one by more than the standard error of their difference, over groups
(the "one standard error" rule of Breiman et al., *Classification and Regression Trees*,
1984; docs/experiments.md, "Choices within one standard error").
"""

import math

import numpy as np

__all__ = ["clearly_worse", "group_means", "standard_error"]


def group_means(values, groups=None):
    """The mean of `values` per group (a label per value, in order of first appearance); each
    value its own group when `groups` is None."""
    if groups is None:
        return np.asarray(values, np.float64)
    members = {}
    for value, group in zip(values, groups):
        members.setdefault(group, []).append(value)
    return np.array([np.mean(member) for member in members.values()], np.float64)


def standard_error(values):
    """The standard error of the mean of `values`; None with fewer than two."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def clearly_worse(scores, best, groups=None):
    """Whether per-image `scores` fall short of `best` (the same images' scores under another
    choice) by more than the standard error of their mean difference, taken over the means of
    `groups` (a label per image; each image its own when None). With one group, any shortfall
    counts."""
    differences = group_means(np.subtract(best, scores), groups)
    shortfall = float(differences.mean())
    return shortfall > (standard_error(differences) or 0.0)
