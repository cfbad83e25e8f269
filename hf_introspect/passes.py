"""The three passes of a run and the labels read out for each: the vocabulary every wing shares.

Passes (split names):

========== ======================================================== ==========================
pass       what the model is asked                                  labels read at the answer
========== ======================================================== ==========================
mcq        answer the question with one letter                      A B C D
self_conf  how confident it is that it knows the answer (8 bins)    S T U V W X Y Z
other_conf share of college-educated people who would know it      S T U V W X Y Z
========== ======================================================== ==========================

Bins are lettered S-Z so they never collide with the answer letters A-D.
"""

from __future__ import annotations

PASSES = ("mcq", "self_conf", "other_conf")
# The seed README's `prompt_type` values, one per pass.
PROMPT_TYPES = {"mcq": "mcq", "self_conf": "self_confidence", "other_conf": "other_confidence"}

ANSWER_LABELS = ("A", "B", "C", "D")
CONFIDENCE_LABELS = ("S", "T", "U", "V", "W", "X", "Y", "Z")
CONFIDENCE_RANGES = ("<5%", "5-10%", "10-20%", "20-40%", "40-60%", "60-80%", "80-90%", ">90%")
# Midpoint (in %) of each bin; expected confidence = sum(p_bin * midpoint).
CONFIDENCE_MIDPOINTS = (2.5, 7.5, 15.0, 30.0, 50.0, 70.0, 85.0, 95.0)


def labels_for_pass(pass_name: str) -> tuple[str, ...]:
    """The label tokens read out for a pass: A-D for ``mcq``, S-Z for the confidence passes."""
    return ANSWER_LABELS if pass_name == "mcq" else CONFIDENCE_LABELS
