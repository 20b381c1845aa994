"""LLM.chat: rendered prompt ids equal HF's apply_chat_template, greedy replies equal HF generate,
explicit templates (string and file), tools, batches, and every bad-input error."""
from __future__ import annotations

import pytest
import torch

from runner.engine import LLM, SamplingParams
from runner.engine.chat_utils import render_prompts

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Where is Paris?"},
]
CONV_CONT = CONV + [{"role": "assistant", "content": "Paris is the capital"}]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

# a template that shows the tools it was given (the tiny model's ChatML template ignores them)
TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTools: ' }}"
    "{% for t in tools %}{{ t['function']['name'] }} {% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                            "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def llm(tiny_model_factory):
    return LLM(tiny_model_factory("llama"), max_model_len=128)


def hf_ids(tok, conv, **kw) -> list[int]:
    out = tok.apply_chat_template(conv, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("flags", [dict(add_generation_prompt=True),
                                   dict(add_generation_prompt=False),
                                   dict(add_generation_prompt=False, continue_final_message=True)])
def test_prompt_ids_equal_hf_apply_chat_template(llm, flags):
    tok = llm.get_tokenizer()
    conv = CONV_CONT if flags.get("continue_final_message") else CONV
    out = llm.chat(conv, SamplingParams(max_tokens=1), use_tqdm=False, **flags)[0]
    assert out.prompt_token_ids == hf_ids(tok, conv, **flags)
    assert out.prompt == tok.apply_chat_template(conv, tokenize=False, **flags)
    if flags.get("continue_final_message"):
        assert out.prompt.endswith("Paris is the capital")


def test_explicit_template_string_and_file(llm, tmp_path):
    tok = llm.get_tokenizer()
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    want = hf_ids(tok, CONV, chat_template=template, add_generation_prompt=True)
    from_str = llm.chat(CONV, SamplingParams(max_tokens=1), use_tqdm=False,
                        chat_template=template)[0]
    assert from_str.prompt == "[system] You are terse.\n[user] Where is Paris?\n"
    assert from_str.prompt_token_ids == want
    path = tmp_path / "template.jinja"
    path.write_text(template)
    from_file = llm.chat(CONV, SamplingParams(max_tokens=1), use_tqdm=False,
                         chat_template=str(path))[0]
    assert from_file.prompt_token_ids == want


def test_tools_reach_the_template(llm):
    tok = llm.get_tokenizer()
    out = llm.chat(CONV, SamplingParams(max_tokens=1), use_tqdm=False,
                   chat_template=TOOLS_TEMPLATE, tools=TOOLS)[0]
    assert "Tools: get_weather" in out.prompt
    assert out.prompt_token_ids == hf_ids(tok, CONV, chat_template=TOOLS_TEMPLATE, tools=TOOLS,
                                          add_generation_prompt=True)


def test_no_double_bos(tiny_model_factory):
    """A template that writes BOS itself: rendering must not add a second one."""
    llm = LLM(tiny_model_factory("llama"), max_model_len=128)
    tok = llm.get_tokenizer()
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    ids = llm.chat(CONV, SamplingParams(max_tokens=1), use_tqdm=False,
                   chat_template=template)[0].prompt_token_ids
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_greedy_equals_hf_generate(llm, tiny_model_factory):
    from transformers import AutoModelForCausalLM
    path = tiny_model_factory("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    tok = llm.get_tokenizer()
    convs = [CONV, [{"role": "user", "content": "Hello world! How are you today?"}]]
    outs = llm.chat(convs, GREEDY, use_tqdm=False)
    assert len(outs) == 2
    for conv, out in zip(convs, outs):
        ids = torch.tensor([hf_ids(tok, conv, add_generation_prompt=True)])
        with torch.no_grad():
            ref = model.generate(ids, max_new_tokens=12, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert out.outputs[0].token_ids == ref


def test_per_conversation_sampling_params(llm):
    outs = llm.chat([CONV, CONV], [SamplingParams(temperature=0, max_tokens=k, ignore_eos=True)
                                   for k in (2, 5)], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [2, 5]


@pytest.mark.parametrize("messages, match", [
    ([{"content": "hi"}], r"message 0: has no 'role'"),
    ([{"role": "user", "content": "a"}, {"role": "user"}], r"message 1: has no 'content'"),
    ([{"role": "user", "content": None}], r"message 0: has no 'content'"),
    ([{"role": "system", "content": "s"}, {"role": "wizard", "content": "hi"}],
     r"message 1: unknown role 'wizard'.*system.*user.*assistant.*tool"),
    ([], r"non-empty"),
    ([{"role": "user", "content": 3}], r"message 0: content must be a string"),
    (["hello"], r"message 0: must be a dict"),
    ([[{"role": "user", "content": "a"}], {"role": "user", "content": "b"}], r"mixes"),
])
def test_bad_messages(llm, messages, match):
    with pytest.raises(ValueError, match=match):
        llm.chat(messages, use_tqdm=False)


def test_bad_message_in_second_conversation_names_it(llm):
    with pytest.raises(ValueError, match=r"message 0: unknown role 'bot'"):
        llm.chat([CONV, [{"role": "bot", "content": "x"}]], use_tqdm=False)


def test_both_generation_flags_rejected(llm):
    with pytest.raises(ValueError, match="add_generation_prompt.*continue_final_message"):
        llm.chat(CONV_CONT, add_generation_prompt=True, continue_final_message=True,
                 use_tqdm=False)


def test_no_chat_template(llm):
    tok = llm.get_tokenizer()
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="no chat template"):
            llm.chat(CONV, use_tqdm=False)
        # an explicit template still works without one on the tokenizer
        out = llm.chat(CONV, SamplingParams(max_tokens=1), use_tqdm=False,
                       chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
        assert out[0].prompt == "You are terse.Where is Paris?"
    finally:
        tok.chat_template = saved


def test_missing_template_file(llm, tmp_path):
    with pytest.raises(ValueError, match="neither a Jinja template"):
        llm.chat(CONV, chat_template=str(tmp_path / "nope.jinja"), use_tqdm=False)


def test_text_parts_and_tool_call_only_assistant(llm):
    tok = llm.get_tokenizer()
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"},
                                          {"type": "text", "text": "b"}]}]
    (p,) = render_prompts(tok, parts)
    assert p["prompt"] == tok.apply_chat_template([{"role": "user", "content": "a\nb"}],
                                                  tokenize=False, add_generation_prompt=True)
    calls = CONV + [{"role": "assistant", "content": None,
                     "tool_calls": [{"type": "function", "function": {"name": "f",
                                                                      "arguments": "{}"}}]},
                    {"role": "tool", "content": "sunny"}]
    assert render_prompts(tok, calls)[0]["prompt"].endswith("<|im_start|>assistant\n")
