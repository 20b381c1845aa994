"""Incremental detokenizer against full decodes, window size, SentencePiece spaces, stop strings."""
from __future__ import annotations

import json
import random

import pytest

from runner.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from tests.tiny_models import _CORPUS, make_tokenizer

MULTIBYTE = ["é", "€", "😀", "日本語", "ß", "🇫🇷", "ñandú", "\u00a0", "Ω≈ç√"]


@pytest.fixture(scope="module")
def byte_tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def sp_tok():
    """A Llama-style SentencePiece BPE: Metaspace '▁' pieces, byte fallback, strip-first-space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    # byte fallback needs <0xNN> pieces in the model vocabulary itself
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def random_text(rng: random.Random) -> str:
    words = " ".join(_CORPUS).split()
    parts = [rng.choice(words + MULTIBYTE) for _ in range(rng.randrange(1, 12))]
    return " ".join(parts)


def run_incremental(tok, prompt_ids, output_ids, rng, skip_special_tokens=True):
    """Append output_ids in random chunks of 1-3; returns (deltas, flushed tail, detokenizer)."""
    detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas, i = [], 0
    while i < len(output_ids):
        n = rng.randrange(1, 4)
        delta = detok.append(output_ids[i:i + n])
        assert not delta.endswith("\ufffd")  # incomplete UTF-8 is held back
        deltas.append(delta)
        assert detok.output_text == "".join(deltas)
        i += n
    return deltas, detok.flush(), detok


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_byte_level_random_ids_equal_full_decode(byte_tok, skip_special_tokens):
    rng = random.Random(0)
    vocab = len(byte_tok)
    specials = [0, 1, 2, 3, 4]
    for _ in range(150):
        prompt = byte_tok.encode(random_text(rng))
        # mix valid multi-byte text, special tokens and arbitrary ids (lone UTF-8 bytes too)
        output = []
        for _ in range(rng.randrange(1, 6)):
            kind = rng.random()
            if kind < 0.4:
                output += byte_tok.encode(" " + random_text(rng))
            elif kind < 0.6:
                output.append(rng.choice(specials))
            else:
                output += [rng.randrange(vocab) for _ in range(rng.randrange(1, 5))]
        deltas, tail, detok = run_incremental(byte_tok, prompt, output, rng, skip_special_tokens)
        expected = byte_tok.decode(output, skip_special_tokens=skip_special_tokens)
        assert "".join(deltas) + tail == expected
        assert detok.output_text == expected
        assert detok.output_token_ids == output


def test_multibyte_characters_are_emitted_whole(byte_tok):
    text = "".join(MULTIBYTE)
    ids = byte_tok.encode(text)
    detok = IncrementalDetokenizer(byte_tok, byte_tok.encode("Hi"))
    deltas = [detok.append([t]) for t in ids]
    assert "".join(deltas) == text
    assert "\ufffd" not in "".join(deltas)
    assert "" in deltas  # some tokens hold only part of a character: nothing emitted for them
    assert detok.flush() == ""


def test_special_tokens_skipped_or_kept(byte_tok):
    ids = byte_tok.encode(" Hello") + [4, 2] + byte_tok.encode(" world")
    skip = IncrementalDetokenizer(byte_tok, [1])
    keep = IncrementalDetokenizer(byte_tok, [1], skip_special_tokens=False)
    for t in ids:
        skip.append([t])
        keep.append([t])
    assert skip.output_text == " Hello world"
    assert keep.output_text == " Hello<|im_end|></s> world"


def test_decode_window_stays_small(byte_tok):
    """Each append decodes only a few ids, however long the sequence gets."""
    calls = []

    class Recording:
        def decode(self, ids, **kw):
            calls.append(len(ids))
            return byte_tok.decode(ids, **kw)

    output = byte_tok.encode(" ".join(_CORPUS) * 3 + "".join(MULTIBYTE))
    assert len(output) > 300
    detok = IncrementalDetokenizer(Recording(), byte_tok.encode(" ".join(_CORPUS)))
    for t in output:
        detok.append([t])
    assert detok.output_text == byte_tok.decode(output)
    assert max(calls) <= 12
    assert len(calls) <= 2 * len(output)


def test_sentencepiece_keeps_the_space_after_the_prompt(sp_tok):
    prompt = sp_tok.encode("Hello world")
    output = sp_tok.encode(" there é€😀 ok", add_special_tokens=False)
    assert sp_tok.convert_ids_to_tokens(output[:1])[0].startswith("▁")
    detok = IncrementalDetokenizer(sp_tok, prompt)
    for t in output:
        detok.append([t])
    # the continuation of the prompt, space included, as vLLM reports it
    assert detok.output_text == " there é€😀 ok"
    full = sp_tok.decode(prompt + output, skip_special_tokens=True)
    assert detok.output_text == full[len(sp_tok.decode(prompt, skip_special_tokens=True)):]
    # without a prompt there is nothing to separate from: same as decoding the output alone
    alone = IncrementalDetokenizer(sp_tok, [])
    for t in output:
        alone.append([t])
    assert alone.output_text == sp_tok.decode(output) == "there é€😀 ok"


def test_sentencepiece_random_texts_in_random_chunks(sp_tok):
    rng = random.Random(1)
    for _ in range(100):
        prompt = sp_tok.encode(random_text(rng))
        output = []
        for _ in range(rng.randrange(1, 4)):
            output += sp_tok.encode(" " + random_text(rng), add_special_tokens=False)
            if rng.random() < 0.3:
                output.append(2)  # </s>, skipped
        deltas, tail, _ = run_incremental(sp_tok, prompt, output, rng)
        prompt_text = sp_tok.decode(prompt, skip_special_tokens=True)
        expected = sp_tok.decode(prompt + output, skip_special_tokens=True)[len(prompt_text):]
        assert "".join(deltas) + tail == expected
        assert tail == ""  # whole characters only: nothing left to flush


def test_truncate(byte_tok):
    detok = IncrementalDetokenizer(byte_tok, [])
    detok.append(byte_tok.encode("Hello world"))
    detok.truncate(5)
    assert detok.output_text == "Hello"


# ---------------------------------------------------------------------- stop strings

def test_stop_string_in_new_text():
    text = "Hello world"
    assert find_stop_string(text, 6, ["wor"], False) == ("wor", 6)
    assert find_stop_string(text, 6, ["wor"], True) == ("wor", 9)
    assert find_stop_string(text, 6, ["xyz"], False) is None
    assert find_stop_string(text, 0, ["wor"], False) is None
    assert find_stop_string("ab", 2, ["abc"], False) is None


def test_stop_string_split_across_appends():
    stop = ["<end>"]
    # step 1: "abc<e" arrives, no full match yet
    assert find_stop_string("abc<e", 5, stop, False) is None
    # step 2: "nd>xy" completes it; the match starts in the older text
    assert find_stop_string("abc<end>xy", 5, stop, False) == ("<end>", 3)
    assert find_stop_string("abc<end>xy", 5, stop, True) == ("<end>", 8)
    # one char at a time
    text, found = "", None
    for ch in "so<end>more":
        text += ch
        found = find_stop_string(text, 1, stop, False)
        if found:
            break
    assert found == ("<end>", 2) and text == "so<end>"


def test_old_matches_are_not_reported_again():
    # "stop" lies wholly before the new chars: an earlier step already handled it
    assert find_stop_string("stop here", 4, ["stop"], False) is None
    # but a match reaching into the new chars is found even if it starts long before
    assert find_stop_string("xxLONGSTOP", 1, ["LONGSTOP"], False) == ("LONGSTOP", 2)


def test_earliest_of_several_stop_strings_wins():
    text = "xx AB CD"
    assert find_stop_string(text, len(text), ["CD", "AB"], False) == ("AB", 3)
    assert find_stop_string(text, len(text), ["CD", "AB"], True) == ("AB", 5)
    assert find_stop_string(text, 2, ["CD", "AB"], False) == ("CD", 6)
    # same start: the longer stop string wins, so "\n\n" is not cut short by "\n"
    assert find_stop_string("a\n\nb", 3, ["\n", "\n\n"], True) == ("\n\n", 3)
    assert find_stop_string("a\n\nb", 3, ["\n", "\n\n"], False) == ("\n\n", 1)


def test_stop_at_the_very_end_with_include():
    text = "answer: 42."
    assert find_stop_string(text, 1, ["."], True) == (".", len(text))
    assert find_stop_string(text, 1, ["."], False) == (".", len(text) - 1)
