"""The request fields of every endpoint, OpenAI's and vLLM's names, with their types and bounds.

    ModelFacts (vocab size, max_model_len, max_logprobs, the engine's SamplingParams fields)
    + ServeConfig limits -> request_tables(...) -> {"completions": {name: Field}, "chat": ...}
    -> schema.validate (runner/serve/protocol.py) and schema.body_schema (/openapi.json)

A field the server cannot honour is either absent (an unknown field is refused by name) or
declared with the only values it can honour and an `unsupported` note (`suffix` must be empty,
`priority` 0, `logit_bias` {} unless the engine's SamplingParams has it), so nothing a client
sends is accepted and ignored. vLLM-only fields that this server does not implement get a
message saying so (NOT_IMPLEMENTED).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runner.serve.schema import Field

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# vLLM request fields this server does not implement: refused by name with this message.
NOT_IMPLEMENTED = frozenset({
    "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "guided_decoding_backend", "guided_whitespace_pattern", "cache_salt", "kv_transfer_params",
    "vllm_xargs", "prompt_embeds", "truncation_side", "repetition_detection",
    "thinking_token_budget", "logits_processors", "mm_processor_kwargs",
    "media_io_kwargs", "documents", "reasoning_effort", "include_reasoning", "audio",
    "modalities", "prediction", "service_tier", "store", "metadata", "web_search_options",
    "parallel_tool_calls", "functions", "function_call", "return_tokens_as_token_ids_only"})


@dataclass(frozen=True)
class ModelFacts:
    """What the tables need to know about the served model and the server's limits."""

    vocab_size: int
    max_model_len: int
    max_logprobs: int = 20
    sampling_fields: frozenset = frozenset()  # SamplingParams' field names
    structured_outputs: bool = False     # the engine can constrain decoding (xgrammar there)
    max_n: int = 128
    max_prompts: int = 256
    max_prompt_tokens: int = 0          # 0: max_model_len - 1
    max_stop: int = 64
    max_stop_chars: int = 1024
    max_body_bytes: int = 16 * 2**20
    max_tokenize_chars: int = 2**20

    @property
    def prompt_tokens(self) -> int:
        return self.max_prompt_tokens or self.max_model_len - 1


def structured_outputs_available() -> bool:
    import importlib.util

    return ("structured_outputs" in sampling_params_fields()
            and importlib.util.find_spec("xgrammar") is not None)


def sampling_params_fields() -> frozenset:
    from runner.engine import SamplingParams

    return frozenset(f.name for f in dataclasses.fields(SamplingParams))


def _int(doc: str, lo: Any = INT64_MIN, hi: Any = INT64_MAX, **kw) -> Field:
    return Field("integer", doc, minimum=lo, maximum=hi, **kw)


def _num(doc: str, lo: Any = None, hi: Any = None, **kw) -> Field:
    return Field("number", doc, minimum=lo, maximum=hi, **kw)


def _bool(doc: str, default: Any = None) -> Field:
    return Field("boolean", doc, default=default)


def token_ids(m: ModelFacts, doc: str, max_items: int, min_items: int = 1) -> Field:
    return Field("array", doc, min_items=min_items, max_items=max_items, nullable=False,
                 items=Field("integer", minimum=0, maximum=m.vocab_size - 1, nullable=False))


def prompt_union(m: ModelFacts, max_tokens: int = 0) -> Field:
    """A completion prompt (room for one generated token) or an embedding input
    (max_tokens=max_model_len)."""
    max_tokens = max_tokens or m.prompt_tokens
    text = Field("string", nullable=False, max_length=m.max_body_bytes)
    texts = Field("array", min_items=1, max_items=m.max_prompts, items=text, nullable=False)
    ids = token_ids(m, "", max_tokens)
    id_lists = Field("array", min_items=1, max_items=m.max_prompts, items=ids, nullable=False)
    return Field(any_of=(text, texts, ids, id_lists), nullable=False, required_field=True,
                 doc=f"Text, a list of texts, token ids or a list of token-id lists (at most "
                     f"{m.max_prompts} prompts, each at most {max_tokens} tokens).",
                 what=f"a string, a list of strings, a list of token ids in [0, "
                      f"{m.vocab_size}) or a list of token-id lists (1 to {m.max_prompts} "
                      f"prompts, each 1 to {max_tokens} tokens)")


def _stop(m: ModelFacts) -> Field:
    one = Field("string", min_length=1, max_length=m.max_stop_chars, nullable=False)
    return Field(any_of=(one, Field("array", max_items=m.max_stop, items=one, nullable=False)),
                 doc="Stop strings (not in the output unless include_stop_str_in_output).",
                 what=f"a non-empty string or a list of at most {m.max_stop} of them (each at "
                      f"most {m.max_stop_chars} characters)")


def _stream_options() -> Field:
    return Field("object", "Only with stream=true.", properties={
        "include_usage": Field("boolean", "A last chunk with the usage."),
        "continuous_usage_stats": Field("boolean", "Usage in every chunk (vLLM)."),
    })


def sampling_fields(m: ModelFacts) -> dict[str, Field]:
    """Fields that map onto SamplingParams, common to completions and chat."""
    sp = m.sampling_fields
    f: dict[str, Field] = {
        "model": Field("string", "A served model (GET /v1/models); default: the first.",
                       max_length=1024),
        "n": _int("Completions per prompt.", 1, m.max_n, default=1),
        "best_of": _int("Candidates per prompt, the n best returned (vLLM).", 1, m.max_n),
        "presence_penalty": _num("", -2.0, 2.0, default=0.0),
        "frequency_penalty": _num("", -2.0, 2.0, default=0.0),
        "repetition_penalty": Field("number", "1 disables it (vLLM).", exclusive_minimum=0.0,
                                    maximum=100.0),
        "temperature": _num("0 is greedy.", 0.0, 2.0),
        "top_p": Field("number", "", exclusive_minimum=0.0, maximum=1.0),
        "top_k": _int("-1 or 0 disable it (vLLM).", -1),
        "min_p": _num("(vLLM)", 0.0, 1.0),
        "seed": _int("Per-request random stream."),
        "stop": _stop(m),
        "stop_token_ids": Field("array", "Token ids that end a completion (vLLM).",
                                max_items=m.max_stop, items=Field(
                                    "integer", minimum=0, maximum=m.vocab_size - 1,
                                    nullable=False)),
        "include_stop_str_in_output": _bool("(vLLM)", False),
        "ignore_eos": _bool("(vLLM)", False),
        "min_tokens": _int("(vLLM)", 0, m.max_model_len),
        "prompt_logprobs": _int("Logprobs of every prompt token with this many alternatives "
                                "(vLLM; not with stream=true).", 0, m.max_logprobs),
        "skip_special_tokens": _bool("(vLLM)", True),
        "spaces_between_special_tokens": _bool("(vLLM)", True),
        "truncate_prompt_tokens": _int("Keep the last N prompt tokens; -1: as many as fit "
                                       "(vLLM).", -1, m.max_model_len),
        "use_beam_search": _bool("Legacy beam search: best_of beams, n returned (vLLM).",
                                 False),
        "length_penalty": _num("Beam search only (vLLM).", -100.0, 100.0),
        "early_stopping": Field(any_of=(Field("boolean", nullable=False),
                                        Field("string", enum=("never",), nullable=False)),
                                doc="Beam search only (vLLM).", what='true, false or "never"'),
        "stream": _bool("Server-sent events, ending with data: [DONE].", False),
        "stream_options": _stream_options(),
        "user": Field("string", "An end-user id (OpenAI); recorded nowhere.", max_length=256),
        "return_token_ids": _bool("Choices carry token_ids and prompt_token_ids (vLLM).",
                                  False),
        "request_id": Field("string", "The id the response carries (vLLM).", max_length=256),
        "priority": _int("", 0, 0, unsupported="is not supported: this server has no "
                                               "priority scheduling, only 0"),
    }
    if "bad_words" in sp:
        f["bad_words"] = Field("array", "Words never generated (vLLM).", max_items=m.max_stop,
                               items=Field("string", min_length=1,
                                           max_length=m.max_stop_chars, nullable=False))
    f.update(structured_fields(m))
    if "logit_bias" in sp:
        f["logit_bias"] = Field("object", "Token id (as a string) -> bias in [-100, 100].",
                                max_properties=1024,
                                additional=_num("", -100.0, 100.0, nullable=False))
    else:
        f["logit_bias"] = Field("object", "", max_properties=0,
                                unsupported="is not supported by this engine (only {} or null)")
    if "allowed_token_ids" in sp:
        f["allowed_token_ids"] = Field("array", "Only these tokens may be sampled (vLLM).",
                                       max_items=m.vocab_size, items=Field(
                                           "integer", minimum=0, maximum=m.vocab_size - 1,
                                           nullable=False))
    else:
        f["allowed_token_ids"] = Field("array", "", max_items=0,
                                       unsupported="is not supported by this engine")
    return f


def structured_fields(m: ModelFacts) -> dict[str, Field]:
    """vLLM 0.24's structured outputs: `response_format` (OpenAI's json_object / json_schema)
    and `structured_outputs` (json, regex, choice, grammar, json_object), through the engine's
    xgrammar; without xgrammar on the server, only {"type": "text"} and the reason."""
    if not m.structured_outputs:
        why = ("needs the xgrammar package on the server (pip install 'runner[structured]')"
               if "structured_outputs" in m.sampling_fields else "is not supported")
        return {
            "response_format": Field("object", "", properties={
                "type": Field("string", enum=("text",), nullable=False)},
                unsupported=f'beyond {{"type": "text"}} {why}'),
            "structured_outputs": Field("object", "", max_properties=0, unsupported=why)}
    text = Field("string", nullable=False, max_length=m.max_body_bytes)
    schema = Field("object", nullable=False, additional=True, max_properties=4096)
    return {
        "response_format": Field("object", "text, json_object (any JSON object) or "
                                           "json_schema (JSON that follows `schema`).",
                                 required=("type",), properties={
            "type": Field("string", enum=("text", "json_object", "json_schema"),
                          nullable=False),
            "json_schema": Field("object", required=("name",), properties={
                "name": Field("string", max_length=256, nullable=False),
                "description": Field("string", max_length=m.max_body_bytes),
                "schema": schema,
                "strict": Field("boolean")})}),
        "structured_outputs": Field("object", "Constrained decoding (vLLM): one of json, "
                                              "regex, choice, grammar, json_object.",
                                    properties={
            "json": Field(any_of=(schema, text), what="a JSON schema (object or string)"),
            "regex": text,
            "choice": Field("array", min_items=1, max_items=4096, items=text),
            "grammar": text,
            "json_object": Field("boolean"),
            "disable_any_whitespace": Field("boolean"),
            "disable_additional_properties": Field("boolean")}),
    }


def completion_fields(m: ModelFacts) -> dict[str, Field]:
    f = sampling_fields(m)
    f.update({
        "prompt": prompt_union(m),
        "max_tokens": _int("Tokens to generate; 0 (with echo) scores the prompt only.", 0,
                           m.max_model_len, default=16),
        "logprobs": _int("Logprobs of each token with this many alternatives.", 0,
                         m.max_logprobs),
        "echo": _bool("Prepend the prompt (and, with logprobs, its token logprobs).", False),
        "suffix": Field("string", "", max_length=0,
                        unsupported="is not supported by this server (only empty)"),
        "add_special_tokens": _bool("Add BOS and friends to text prompts (vLLM).", True),
        "return_tokens_as_token_ids": _bool('Logprob tokens as "token_id:N" (vLLM).', False),
    })
    return f


def _message() -> Field:
    part = Field("object", "A text part.", nullable=False, required=("type", "text"),
                 properties={"type": Field("string", enum=("text",), nullable=False),
                             "text": Field("string", nullable=False)})
    content = Field(any_of=(Field("string", nullable=False),
                            Field("array", items=part, max_items=1024, nullable=False)),
                    what="a string or a list of text parts ({type: text, text})")
    return Field("object", nullable=False, required=("role",), properties={
        "role": Field("string", enum=("system", "developer", "user", "assistant", "tool"),
                      nullable=False),
        "content": content,
        "name": Field("string", max_length=256),
        "tool_call_id": Field("string", max_length=256),
        "refusal": Field("string", max_length=0),
        "tool_calls": Field("array", max_items=0, unsupported="is not supported"),
    })


def chat_fields(m: ModelFacts) -> dict[str, Field]:
    f = sampling_fields(m)
    f.update({
        "messages": Field("array", "The conversation, rendered with the chat template.",
                          nullable=False, required_field=True, min_items=1, max_items=4096,
                          items=_message()),
        "max_tokens": _int("Deprecated name of max_completion_tokens.", 1, m.max_model_len),
        "max_completion_tokens": _int("Tokens to generate.", 1, m.max_model_len),
        "logprobs": _bool("Logprobs of each generated token.", False),
        "top_logprobs": _int("Alternatives per token (needs logprobs=true).", 0,
                             m.max_logprobs),
        "tools": Field("array", "", max_items=0,
                       unsupported="is not supported by this server (no tool calling)"),
        "tool_choice": Field("string", "", enum=("none", "auto"),
                             unsupported='is not supported beyond "none" (no tools)'),
        "add_generation_prompt": _bool("(vLLM)", True),
        "continue_final_message": _bool("Leave the last message open (vLLM).", False),
        "add_special_tokens": _bool("On top of the template's (vLLM).", False),
        "chat_template": Field("string", "A Jinja template for this request (only with "
                                         "serve.allow_request_chat_template).",
                               max_length=m.max_body_bytes),
        "chat_template_kwargs": Field("object", "Extra variables for the template (vLLM).",
                                      additional=True, max_properties=256),
    })
    return f


def embedding_fields(m: ModelFacts) -> dict[str, Field]:
    return {
        "model": Field("string", "A served model.", max_length=1024),
        "input": prompt_union(m, m.max_model_len),
        "encoding_format": Field("string", "", enum=("float", "base64"), default="float"),
        "dimensions": _int("Matryoshka truncation.", 1, 1 << 20),
        "user": Field("string", "An end-user id (OpenAI); recorded nowhere.", max_length=256),
        "add_special_tokens": _bool("(vLLM)", True),
    }


def tokenize_fields(m: ModelFacts, chat: bool) -> dict[str, Field]:
    f = {"model": Field("string", "A served model.", max_length=1024),
         "return_token_strs": _bool("Also the token strings.", False)}
    if chat:
        c = chat_fields(m)
        for name in ("messages", "add_generation_prompt", "continue_final_message",
                     "chat_template", "chat_template_kwargs", "tools"):
            f[name] = c[name]
        f["add_special_tokens"] = _bool("On top of the template's.", False)
    else:
        f["prompt"] = Field("string", "The text to tokenize.", nullable=False,
                            required_field=True, max_length=m.max_tokenize_chars)
        f["add_special_tokens"] = _bool("Add BOS and friends.", True)
    return f


def detokenize_fields(m: ModelFacts) -> dict[str, Field]:
    return {"model": Field("string", "A served model.", max_length=1024),
            "tokens": dataclasses.replace(token_ids(m, "The token ids to decode.",
                                                    m.max_model_len, min_items=0),
                                          required_field=True)}


def request_tables(m: ModelFacts) -> dict[str, dict[str, Field]]:
    return {"completions": completion_fields(m), "chat": chat_fields(m),
            "embeddings": embedding_fields(m), "tokenize": tokenize_fields(m, False),
            "tokenize_chat": tokenize_fields(m, True), "detokenize": detokenize_fields(m)}
