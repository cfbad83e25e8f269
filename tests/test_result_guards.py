"""Guards on values that change results (issue 17 item 13): each expected value is written out
here by hand, never taken from the package's own constants, so a wrong constant or a feature
that always says False fails."""

from __future__ import annotations

import numpy as np
import pytest

from hf_introspect.collection.readout import expected_confidence
from hf_introspect.passes import CONFIDENCE_LABELS, CONFIDENCE_MIDPOINTS
from hf_introspect.questions.surface import question_type, surface_features

# The seed's bins S-Z: <5%, 5-10%, 10-20%, 20-40%, 40-60%, 60-80%, 80-90%, >90% -> midpoints in %.
SEED_MIDPOINTS = {"S": 2.5, "T": 7.5, "U": 15.0, "V": 30.0, "W": 50.0, "X": 70.0, "Y": 85.0, "Z": 95.0}


def test_confidence_midpoints_are_the_seeds():
    assert dict(zip(CONFIDENCE_LABELS, CONFIDENCE_MIDPOINTS)) == SEED_MIDPOINTS


@pytest.mark.parametrize("probs, expected", [
    # all mass on one bin -> that bin's midpoint
    ([1, 0, 0, 0, 0, 0, 0, 0], 2.5),
    ([0, 0, 0, 0, 0, 0, 1, 0], 85.0),
    ([0, 0, 0, 0, 0, 0, 0, 1], 95.0),
    # 0.1*2.5 + 0.2*85 + 0.7*95 = 0.25 + 17 + 66.5 (unequal weights on Y and Z: a swap shows)
    ([0.1, 0, 0, 0, 0, 0, 0.2, 0.7], 83.75),
    # 0.5*7.5 + 0.25*15 + 0.25*70 = 3.75 + 3.75 + 17.5
    ([0, 0.5, 0.25, 0, 0, 0.25, 0, 0], 25.0),
    # uniform: (2.5+7.5+15+30+50+70+85+95)/8 = 355/8
    ([0.125] * 8, 44.375),
    # 0.4*30 + 0.6*50
    ([0, 0, 0, 0.4, 0.6, 0, 0, 0], 42.0),
])
def test_expected_confidence_of_known_probabilities(probs, expected):
    assert expected_confidence(np.array(probs, dtype=np.float64)) == pytest.approx(expected, abs=1e-9)


def test_every_midpoint_is_in_its_bin_in_the_written_order():
    """Each one-hot vector reads its own bin: catches any permutation of the constant."""
    for i, label in enumerate(CONFIDENCE_LABELS):
        assert expected_confidence(np.eye(8)[i]) == SEED_MIDPOINTS[label]


@pytest.mark.parametrize("text, qtype, negation, ambiguity", [
    ("Which country did not take part in the 1980 Olympics?", "which", True, False),
    ("Who never won an Oscar for Best Actor?", "who", True, False),
    ("What isn't a prime number?", "what", True, False),
    ("Which of these is NOT a mammal?", "which", True, False),
    ("All of the following are planets except which one?", "which", True, False),
    ("What is the capital of France?", "what", False, False),
    ("Where is Mount Kilimanjaro?", "where", False, False),
    ("In what year did the Berlin Wall fall?", "what", False, False),
    ("When was the printing press invented?", "when", False, False),
    ("How many legs does a spider have?", "how", False, False),
    ("Why is the sky blue?", "why", False, False),
    ("Whom did Cleopatra marry first?", "who", False, False),
    ("Name the largest ocean.", "other", False, False),
    ("Which animal is probably the fastest on land?", "which", False, True),
    ("Approximately how many bones are in the adult human body?", "how", False, True),
    ("What does a notary do?", "what", False, False),   # "not" inside a word is no negation
    ("Which city was known as Nowhere?", "which", False, False),
    ("Who might have written this without help?", "who", True, True),
])
def test_surface_features_of_known_questions(text, qtype, negation, ambiguity):
    f = surface_features(text, [5, 9, 1])
    assert question_type(text) == qtype and f["question_type"] == qtype
    assert f["has_negation"] is negation
    assert f["has_ambiguity"] is ambiguity
    assert f["char_length"] == len(text)
    assert f["token_length"] == 3
    assert f["token_rarity_mean"] == 5.0 and f["token_rarity_max"] == 9


def test_surface_features_of_no_tokens():
    f = surface_features("", [])
    assert (f["token_length"], f["token_rarity_mean"], f["token_rarity_max"], f["question_type"]) == (0, 0.0, 0, "other")


def test_stored_surface_columns_of_known_questions():
    """The prompt dataset (what collect stores) carries each question's own features."""
    from datasets import Dataset, Features

    from hf_introspect.collection.prompt_dataset import build_prompt_dataset
    from hf_introspect.collection.prompts import DEFAULT_TEMPLATES
    from hf_introspect.schema import question_features
    from hf_introspect.testing import tiny_tokenizer

    texts = ["Which country did not join?", "What is the capital of France?", "Who might win?"]
    rows = [{"question_id": f"q{i}", "question_text": t, "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
             "correct_answer_letter": "A", "question_source": "test", "option_source_index": [0, 1, 2, 3]}
            for i, t in enumerate(texts)]
    tok = tiny_tokenizer()
    ds = build_prompt_dataset(Dataset.from_list(rows, features=Features(question_features())), "mcq",
                              DEFAULT_TEMPLATES["mcq"], tok, True, "guards-mcq")
    assert ds["has_negation"] == [True, False, False]
    assert ds["has_ambiguity"] == [False, False, True]
    assert ds["question_type"] == ["which", "what", "who"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ds["token_length"] == [len(i) for i in ids]
    assert ds["token_rarity_max"] == [max(i) for i in ids]
    np.testing.assert_allclose(ds["token_rarity_mean"], [np.mean(i) for i in ids], rtol=1e-6)
