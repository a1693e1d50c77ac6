"""generation/detokenize.py: incremental text equals the whole decode, split characters are held back."""

from __future__ import annotations

from transformer_squared.generation.detokenize import IncrementalText, held_back

TEXTS = ["Hello, world! The answer is 42.", "naïve café — 東京タワー 🎉🎉 done", "  two  spaces\nand\ttabs  ",
         "Ünïcödé 𝔘𝔫𝔦 ∑x² ≤ ∞ 👩‍💻"]


def test_pieces_add_up_to_the_decoded_text_with_no_split_characters(smol_tokenizer):
    for text in TEXTS:
        ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
        inc = IncrementalText(smol_tokenizer)
        pieces = [inc.push(ids[: k + 1]) for k in range(len(ids))]
        assert "".join(pieces) == inc.text == smol_tokenizer.decode(ids) == text
        assert not any("\ufffd" in p for p in pieces)
        assert sum(p == "" for p in pieces) > 0 or text.isascii()  # multi-byte characters span tokens


def test_held_back_is_the_longest_possible_start_of_a_stop():
    assert held_back("the sto", ("stop",)) == 3
    assert held_back("the sto", ("stop", "o")) == 3
    assert held_back("abc", ("x",)) == 0 and held_back("", ("stop",)) == 0
    assert held_back("end\n", ("\n\n", "User:")) == 1
