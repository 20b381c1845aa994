"""Structured outputs: a request's StructuredOutputsParams -> a token mask for each of its samples.

The grammar work is xgrammar's (the `structured` extra: `pip install runner[structured]`),
vLLM 0.24's default backend; nothing here parses a grammar. Data moves as in vLLM v1, where the
scheduler side owns the grammars and the model runner only applies a bitmask:

    LLMEngine.add_request -> StructuredOutputManager.compile(params) -> group.grammar
      (compiled once per distinct constraint, cached; a bad schema, regex or grammar raises
       here, naming the field)
    sched_utils.sample_spec -> SequenceGrammar.bitmask(output tokens so far) -> SampleSpec
      (each sequence keeps its own matcher, `seq.grammar`, made on its first sample: the
       children of a fork get theirs; before the mask it accepts the tokens the sequence
       sampled since, so it never needs a hook in update_from_output)
    Sampler: logits of disallowed tokens -> -inf before anything else, raw logprobs included
      (vLLM applies the grammar bitmask to the logits before its sampler too)

The mask is packed as xgrammar makes it: int32 words, bit j of word w allows token 32 w + j.
A step that samples a structured request is not run with async scheduling (the scheduler's
rule), so the sequence's last token is known when its mask is made.

Supported: json (a schema, dict or str), json_object, regex, choice (an EBNF alternation of
the literal strings), grammar (EBNF / GBNF), disable_any_whitespace, disable_additional_
properties. structural_tag and whitespace_pattern raise NotImplementedError-like ValueErrors.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

from runner.engine.sampling_params import StructuredOutputsParams


def _import_xgrammar():
    try:
        import xgrammar
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("structured_outputs needs the xgrammar package: pip install "
                          "'runner[structured]' (or pip install xgrammar).") from e
    return xgrammar


def _no_additional_properties(schema):
    """A copy of a JSON schema whose objects allow no properties beyond those listed (vLLM's
    disable_additional_properties), where the schema does not say otherwise."""
    if isinstance(schema, dict):
        out = {k: _no_additional_properties(v) for k, v in schema.items()}
        if out.get("type") == "object" or "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_no_additional_properties(v) for v in schema]
    return schema


class StructuredOutputManager:
    """Compiles constraints for one tokenizer and model vocabulary; caches them by value."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...]):
        if tokenizer is None:
            raise ValueError("structured_outputs needs a tokenizer, so it cannot be used with "
                             "skip_tokenizer_init=True.")
        xgr = _import_xgrammar()
        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_token_ids) or None)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._cache: dict[str, object] = {}

    def compile(self, so: StructuredOutputsParams):
        """The compiled grammar of one constraint (cached)."""
        if so.structural_tag is not None:
            raise ValueError("structured_outputs.structural_tag is not supported by "
                             "runner.engine yet; use json, regex, choice or grammar.")
        if so.whitespace_pattern is not None:
            raise ValueError("structured_outputs.whitespace_pattern is not supported (xgrammar "
                             "has no such option); use disable_any_whitespace=True instead.")
        key = json.dumps([so.json, so.regex, so.choice, so.grammar, so.json_object,
                          so.disable_any_whitespace, so.disable_additional_properties],
                         sort_keys=True, default=str)
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._cache[key] = self._compile(so)
        return compiled

    def _compile(self, so: StructuredOutputsParams):
        c = self._compiler
        try:
            if so.json is not None:
                schema = json.loads(so.json) if isinstance(so.json, str) else so.json
                if so.disable_additional_properties:
                    schema = _no_additional_properties(schema)
                return c.compile_json_schema(json.dumps(schema),
                                             any_whitespace=not so.disable_any_whitespace)
            if so.json_object:
                return c.compile_builtin_json_grammar()
            if so.json_object is not None:
                raise ValueError("structured_outputs.json_object must be True when given.")
            if so.regex is not None:
                return c.compile_regex(so.regex)
            if so.choice is not None:
                # each choice a literal string of the grammar (json.dumps escapes it for EBNF)
                alternatives = " | ".join(json.dumps(choice) for choice in so.choice)
                return c.compile_grammar(f"root ::= {alternatives}")
            return c.compile_grammar(so.grammar)
        except ValueError:
            raise
        except Exception as e:  # xgrammar raises RuntimeError and its own types
            field = next(name for name in ("json", "regex", "choice", "grammar")
                         if getattr(so, name) is not None)
            raise ValueError(f"structured_outputs.{field} could not be compiled: {e}") from e


class SequenceGrammar:
    """One sequence's matcher: accepts its tokens as they come, says which may come next."""

    def __init__(self, compiled, vocab_size: int):
        xgr = _import_xgrammar()
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)     # [1, W] int32 (torch)
        self.num_accepted = 0

    def bitmask(self, output_token_ids: list[int]) -> Optional[np.ndarray]:
        """The packed mask [W] int32 of the token after `output_token_ids` (this sequence's
        tokens so far), or None once the grammar has ended (the sequence is stopping)."""
        m = self._matcher
        for tok in output_token_ids[self.num_accepted:]:
            if m.is_terminated():
                break
            if not m.accept_token(tok):
                raise ValueError(f"structured_outputs: token {tok} does not follow the grammar "
                                 "(a logits processor, min_tokens or a bias forced it).")
        self.num_accepted = len(output_token_ids)
        if m.is_terminated():
            return None
        m.fill_next_token_bitmask(self._bitmask, 0)
        return self._bitmask[0].numpy().copy()


def unpack_bitmask(words: "np.ndarray", vocab_size: int) -> np.ndarray:
    """[W] int32 words -> [vocab_size] bool, True where allowed (for tests and the sampler)."""
    bits = (words.astype(np.int64)[:, None] >> np.arange(32)) & 1      # [W, 32]
    return bits.reshape(-1)[:vocab_size].astype(bool)
