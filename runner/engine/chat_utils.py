"""Chat rendering for LLM.chat: conversations -> prompt text -> prompt token ids.

    messages (one conversation or a list of them) -> validate_conversation (roles, contents)
      -> load_chat_template (None, a template string, or a file holding one)
      -> render_conversation: "developer" messages become "system" ones (merged into one first
         system message) when the template does not name the developer role, as vLLM 0.24
         does -> tokenizer.apply_chat_template(tokenize=False, tools=...,
         **chat_template_kwargs) -> text
      -> tokenizer(text, add_special_tokens=False) -> {"prompt": text, "prompt_token_ids": ids}

The template already writes any BOS it wants, so the text is tokenized without special tokens
(vLLM does the same): otherwise a Llama-style tokenizer would add a second BOS.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

ALLOWED_ROLES = ("system", "developer", "user", "assistant", "tool")
# chat_template_kwargs that would fight the renderer's own arguments (vLLM 0.24 refuses them)
_UNEXPECTED_KWARGS = {"chat_template", "tokenize"}

Conversation = list[dict[str, Any]]


def load_chat_template(chat_template: Optional[Union[str, os.PathLike]]) -> Optional[str]:
    """None, a Jinja template string, or the path of a file holding one -> template text."""
    if chat_template is None:
        return None
    if isinstance(chat_template, os.PathLike):
        chat_template = os.fspath(chat_template)
    if not isinstance(chat_template, str):
        raise ValueError(f"chat_template must be a template string or a file path, got "
                         f"{type(chat_template).__name__}.")
    if "{" not in chat_template and "\n" not in chat_template:
        # no Jinja syntax at all: this is meant as a path
        if not os.path.isfile(chat_template):
            raise ValueError(f"chat_template {chat_template!r} is neither a Jinja template "
                             "(no '{' in it) nor an existing file.")
        with open(chat_template, encoding="utf-8") as fh:
            return fh.read()
    return chat_template


def _content_text(content: Any, index: int) -> str:
    """A message content: a string, or OpenAI-style text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                raise ValueError(f"message {index}: only text content parts "
                                 "({'type': 'text', 'text': ...}) are supported, got "
                                 f"{part!r}.")
            texts.append(part["text"])
        return "\n".join(texts)
    raise ValueError(f"message {index}: content must be a string or a list of text parts, got "
                     f"{type(content).__name__}.")


def validate_conversation(conversation: Any) -> Conversation:
    """Check every message; returns a copy with list contents flattened to text."""
    if not isinstance(conversation, (list, tuple)) or not conversation:
        raise ValueError("a conversation must be a non-empty list of message dicts "
                         "({'role': ..., 'content': ...}).")
    out = []
    for i, msg in enumerate(conversation):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i}: must be a dict with 'role' and 'content', got "
                             f"{type(msg).__name__}.")
        if "role" not in msg:
            raise ValueError(f"message {i}: has no 'role' (one of {list(ALLOWED_ROLES)}).")
        role = msg["role"]
        if role not in ALLOWED_ROLES:
            raise ValueError(f"message {i}: unknown role {role!r}; allowed roles: "
                             f"{list(ALLOWED_ROLES)}.")
        msg = dict(msg)
        if msg.get("content") is None:
            # an assistant turn that only calls tools has no content (OpenAI's format)
            if role == "assistant" and msg.get("tool_calls"):
                msg["content"] = ""
            else:
                raise ValueError(f"message {i}: has no 'content' (role {role!r}).")
        else:
            msg["content"] = _content_text(msg["content"], i)
        out.append(msg)
    return out


def parse_conversations(messages: Any) -> tuple[list[Conversation], bool]:
    """One conversation or a list of them -> (conversations, whether a list was given)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of message dicts, or a list of "
                         "such lists.")
    if all(isinstance(m, (list, tuple)) for m in messages):
        return [validate_conversation(c) for c in messages], True
    if any(isinstance(m, (list, tuple)) for m in messages):
        raise ValueError("messages mixes conversations (lists) and messages (dicts); give one "
                         "conversation or a list of conversations.")
    return [validate_conversation(messages)], False


def _template_text(tokenizer, chat_template: Optional[str]) -> str:
    template = chat_template or getattr(tokenizer, "chat_template", None) or ""
    return template if isinstance(template, str) else " ".join(map(str, template.values()))


def developer_to_system(conversation: Conversation) -> Conversation:
    """vLLM 0.24's fallback for templates without a developer role: developer messages become
    system messages (their tools dropped), and every system message is merged, in order and
    newline-joined, into one system message at the front."""
    converted = []
    for msg in conversation:
        if msg["role"] == "developer":
            msg = {k: v for k, v in msg.items() if k != "tools"}
            msg["role"] = "system"
        converted.append(msg)
    systems = [i for i, m in enumerate(converted) if m["role"] == "system"]
    if systems == [0] or not systems:
        return converted
    texts = [c for i in systems if (c := _content_text(converted[i]["content"], i))]
    rest = [m for m in converted if m["role"] != "system"]
    return ([{"role": "system", "content": "\n".join(texts)}] if texts else []) + rest


def render_conversation(tokenizer, conversation: Conversation, chat_template: Optional[str],
                        add_generation_prompt: bool, continue_final_message: bool,
                        tools: Optional[Sequence[dict]] = None,
                        chat_template_kwargs: Optional[dict] = None) -> str:
    """One validated conversation -> the prompt text the template writes."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template and no chat_template was given; "
                         "pass chat_template= (a Jinja string or a file path).")
    kwargs = dict(chat_template_kwargs or {})
    bad = _UNEXPECTED_KWARGS & set(kwargs)
    if bad:
        raise ValueError(f"Found unexpected chat template kwargs from request: {bad}")
    kwargs.setdefault("add_generation_prompt", add_generation_prompt)
    kwargs.setdefault("continue_final_message", continue_final_message)
    text = _template_text(tokenizer, chat_template)
    if any(m["role"] == "developer" for m in conversation) and \
            '"developer"' not in text and "'developer'" not in text:
        conversation = developer_to_system(conversation)
    return tokenizer.apply_chat_template(
        conversation, tools=tools, chat_template=chat_template, tokenize=False, **kwargs)


def render_prompts(tokenizer, messages: Any, chat_template=None,
                   add_generation_prompt: bool = True, continue_final_message: bool = False,
                   tools: Optional[Sequence[dict]] = None,
                   chat_template_kwargs: Optional[dict] = None) -> list[dict]:
    """messages -> one {"prompt": text, "prompt_token_ids": ids} per conversation."""
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt=True and continue_final_message=True cannot be "
                         "used together: the first starts a new assistant turn, the second "
                         "continues the last message. Set one of them to False.")
    if tokenizer is None:
        raise ValueError("chat() needs a tokenizer; this LLM was built with "
                         "skip_tokenizer_init=True.")
    conversations, _ = parse_conversations(messages)
    template = load_chat_template(chat_template)
    prompts = []
    for conv in conversations:
        text = render_conversation(tokenizer, conv, template, add_generation_prompt,
                                   continue_final_message, tools, chat_template_kwargs)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        prompts.append({"prompt": text, "prompt_token_ids": ids})
    return prompts
