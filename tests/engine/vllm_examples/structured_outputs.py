# model: tiny_llama
# expect: choice ok
# expect: regex ok
# expect: json ok
# expect: grammar ok
"""Structured outputs, in vLLM's usage pattern (examples/offline_inference/structured_outputs.py):
a choice, a regex, a JSON schema and an EBNF grammar through SamplingParams.structured_outputs."""
import json
import os
import re

from runner.engine import LLM, SamplingParams
from runner.engine.sampling_params import StructuredOutputsParams

MODEL = os.environ["EXAMPLE_MODEL"]


def main():
    llm = LLM(model=MODEL, max_model_len=256, device="cpu")

    choice = SamplingParams(structured_outputs=StructuredOutputsParams(
        choice=["Positive", "Negative"]))
    out = llm.generate("Classify this sentiment: vLLM is wonderful!", choice)
    text = out[0].outputs[0].text
    assert text in ("Positive", "Negative"), text
    print("choice:", text)
    print("choice ok")

    pattern = r"\w+@\w+\.com\n"
    regex = SamplingParams(max_tokens=40, stop=["\n"],
                           structured_outputs=StructuredOutputsParams(regex=pattern))
    out = llm.generate("Generate an email address for Alan Turing, who works in Enigma. "
                       "End in .com and new line. Example result: alan.turing@enigma.com\n",
                       regex)
    text = out[0].outputs[0].text
    print(repr(text))
    # the stop string "\n" is cut from the text; the rest follows the pattern, or was cut short
    # by max_tokens (a random tiny model)
    assert re.fullmatch(r"\w+@\w+\.com", text) or out[0].outputs[0].finish_reason == "length"
    print("regex ok")

    schema = {"type": "object",
              "properties": {"brand": {"enum": ["Toyota", "Ford"]},
                             "car_type": {"enum": ["sedan", "SUV", "Truck"]}},
              "required": ["brand", "car_type"], "additionalProperties": False}
    json_params = SamplingParams(max_tokens=60, structured_outputs=StructuredOutputsParams(
        json=schema, disable_any_whitespace=True))
    out = llm.generate("Generate a JSON with the brand and type of a car.", json_params)
    car = json.loads(out[0].outputs[0].text)
    assert set(car) == {"brand", "car_type"}, car
    print(car)
    print("json ok")

    grammar = """
root ::= select_statement
select_statement ::= "SELECT " column " from " table " where " condition
column ::= "col_1 " | "col_2 "
table ::= "table_1 " | "table_2 "
condition ::= column "= " number
number ::= "1" | "2"
"""
    sql = SamplingParams(max_tokens=60, structured_outputs=StructuredOutputsParams(
        grammar=grammar))
    out = llm.generate("Generate an SQL query to show the 'username' and 'email' from the "
                       "'users' table.", sql)
    text = out[0].outputs[0].text
    print(repr(text))
    assert re.fullmatch(r"SELECT col_[12]  from table_[12]  where col_[12] = [12]", text), text
    print("grammar ok")


if __name__ == "__main__":
    main()
