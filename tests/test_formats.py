"""Formats: each row type rendered as Axolotl renders it, and exactly the reply's tokens trained."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.core.formats import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, IGNORE_INDEX, render, tokenize
from kit.core.models import load_tokenizer
from kit.core.params import DatasetSpec, UserFormat, load_params
from kit.core.sources import BadData
from tests.conftest import SMOKE, TINY_TOKENIZER

CONVERSATION = [
    {"role": "system", "content": "Answer with code."},
    {"role": "user", "content": "Add one."},
    {"role": "assistant", "content": "x + 1"},
    {"role": "user", "content": "Now two."},
    {"role": "assistant", "content": "x + 2"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TINY_TOKENIZER), load_params(SMOKE))


def runs(sample: dict[str, list[int]], tokenizer) -> list[tuple[str, bool]]:
    """The sample after its BOS as maximal runs of (decoded text, trained)."""
    assert sample["input_ids"][0] == tokenizer.bos_token_id and sample["labels"][0] == IGNORE_INDEX
    pairs = list(zip(sample["input_ids"], sample["labels"]))[1:]
    for token, label in pairs:
        assert label in (token, IGNORE_INDEX)
    grouped = itertools.groupby(pairs, key=lambda pair: pair[1] != IGNORE_INDEX)
    return [(tokenizer.decode([token for token, _ in group]), trained) for trained, group in grouped]


def test_alpaca_with_input_trains_only_the_output_and_eos(tokenizer):
    row = {"instruction": "Add one.", "input": "x = 2", "output": "def f(x):\n    return x + 1\n"}
    sample = tokenize(render(row, DatasetSpec(path="d")), tokenizer)
    prompt = ALPACA_WITH_INPUT.format(instruction="Add one.", input="x = 2")
    assert runs(sample, tokenizer) == [(prompt, False), ("def f(x):\n    return x + 1\n</s>", True)]
    assert sample["input_ids"][-1] == tokenizer.eos_token_id and sample["input_ids"].count(tokenizer.eos_token_id) == 1


@pytest.mark.parametrize("row", [{"instruction": "Add one.", "output": "x + 1"},
                                 {"instruction": "Add one.", "input": None, "output": "x + 1"},
                                 {"instruction": "Add one.", "input": "", "output": "x + 1"}])
def test_alpaca_without_input_uses_the_no_input_prompt(tokenizer, row):
    sample = tokenize(render(row, DatasetSpec(path="d")), tokenizer)
    assert runs(sample, tokenizer) == [(ALPACA_NO_INPUT.format(instruction="Add one."), False), ("x + 1</s>", True)]


def test_completion_trains_every_token_but_the_first(tokenizer):
    spec = DatasetSpec(path="d", type="completion", field="code")
    sample = tokenize(render({"code": "import os\nprint(os.sep)\n"}, spec), tokenizer)
    assert runs(sample, tokenizer) == [("import os\nprint(os.sep)\n</s>", True)]
    assert render({"text": "x"}, DatasetSpec(path="d", type="completion")) == [("x", True)]


def test_chat_template_trains_only_assistant_turns(tokenizer):
    spec = DatasetSpec(path="d", type="chat_template", chat_template="chatml")
    sample = tokenize(render({"messages": CONVERSATION}, spec, tokenizer), tokenizer)
    assert runs(sample, tokenizer) == [
        ("<|im_start|>system\nAnswer with code.<|im_end|>\n<|im_start|>user\nAdd one.<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("x + 1<|im_end|>\n", True),
        ("<|im_start|>user\nNow two.<|im_end|>\n<|im_start|>assistant\n", False),
        ("x + 2<|im_end|>\n</s>", True),
    ]


def test_sharegpt_maps_human_and_gpt_to_user_and_assistant(tokenizer):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    row = {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in CONVERSATION]}
    sharegpt = render(row, DatasetSpec(path="d", type="sharegpt", chat_template="chatml"), tokenizer)
    chat = render({"messages": CONVERSATION}, DatasetSpec(path="d", type="chat_template", chat_template="chatml"),
                  tokenizer)
    assert sharegpt == chat and [trained for _, trained in chat] == [False, True, False, True]


def test_message_keys_and_roles_to_train_follow_the_spec(tokenizer):
    row = {"dialog": [{"speaker": m["role"], "text": m["content"]} for m in CONVERSATION[1:3]]}
    spec = DatasetSpec(path="d", type="chat_template", chat_template="chatml", field_messages="dialog",
                       message_property_mappings={"role": "speaker", "content": "text"},
                       roles_to_train=["user", "assistant"])
    assert render(row, spec, tokenizer) == [
        ("<|im_start|>user\n", False), ("Add one.<|im_end|>\n", True),
        ("<|im_start|>assistant\n", False), ("x + 1<|im_end|>\n", True),
    ]


def test_llama2_template_keeps_one_bos_and_one_final_eos(tokenizer):
    spec = DatasetSpec(path="d", type="chat_template", chat_template="llama2")
    sample = tokenize(render({"messages": CONVERSATION}, spec, tokenizer), tokenizer)
    decoded = runs(sample, tokenizer)
    assert decoded[0] == ("[INST] <<SYS>>\nAnswer with code.\n<</SYS>>\n\nAdd one. [/INST]", False)
    assert [text for text, trained in decoded if trained] == ["x + 1 </s>", "x + 2 </s>"]
    ids = sample["input_ids"]
    assert ids[1] != tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 2
    assert ids[-1] == tokenizer.eos_token_id != ids[-2]


def test_the_tokenizers_own_template_is_used_when_none_is_named(tokenizer, monkeypatch):
    spec = DatasetSpec(path="d", type="chat_template")
    with pytest.raises(ValueError, match="no chat template"):
        render({"messages": CONVERSATION}, spec, tokenizer)
    own = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    monkeypatch.setattr(tokenizer, "chat_template", own)
    assert render({"messages": CONVERSATION[1:3]}, spec, tokenizer) == [("user: Add one.\nassistant: ", False),
                                                                         ("x + 1\n", True)]
    with pytest.raises(ValueError, match="chat_template"):  # unknown names are refused with the params
        DatasetSpec(path="d", type="chat_template", chat_template="vicuna")


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer, monkeypatch):
    # Ends with the number of turns, so a turn renders differently once another follows it.
    counting = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}{{ messages | length }}"
    monkeypatch.setattr(tokenizer, "chat_template", counting)
    with pytest.raises(ValueError, match="does not render conversations turn by turn"):
        render({"messages": CONVERSATION}, DatasetSpec(path="d", type="chat_template"), tokenizer)


def test_user_format_fills_its_templates(tokenizer):
    user = UserFormat(format="<{system}> Q: {instruction} | {input}\nA: ",
                      no_input_format="<{system}> Q: {instruction}\nA: ",
                      system_prompt="Be terse.", field_system="persona", field_output="answer")
    spec = DatasetSpec(path="d", type=user)
    with_input = render({"instruction": "Add.", "input": "1, 2", "answer": "3"}, spec)
    assert with_input == [("<Be terse.> Q: Add. | 1, 2\nA: ", False), ("3", True)]
    own_system = render({"instruction": "Add.", "persona": "Be kind.", "answer": "3"}, spec)
    assert own_system == [("<Be kind.> Q: Add.\nA: ", False), ("3", True)]
    sample = tokenize(own_system, tokenizer)
    assert runs(sample, tokenizer)[-1] == ("3</s>", True)
    broken = DatasetSpec(path="d", type=UserFormat(format="{question}"))
    with pytest.raises(ValueError, match=r"\{question\}|'question'"):
        render({"instruction": "Add.", "output": "3"}, broken)


def test_train_on_inputs_trains_all_but_the_first_token(tokenizer):
    chat = DatasetSpec(path="d", type="chat_template", chat_template="chatml")
    for segments in (render({"instruction": "Add.", "output": "3"}, DatasetSpec(path="d")),
                     render({"messages": CONVERSATION[:3]}, chat, tokenizer)):
        sample = tokenize(segments, tokenizer, train_on_inputs=True)
        assert sample["labels"][0] == IGNORE_INDEX and sample["labels"][1:] == sample["input_ids"][1:]


def test_a_conversation_ending_on_an_untrained_turn_does_not_train_its_eos(tokenizer):
    spec = DatasetSpec(path="d", type="chat_template", chat_template="chatml")
    sample = tokenize(render({"messages": CONVERSATION[:4]}, spec, tokenizer), tokenizer)
    assert sample["input_ids"][-1] == tokenizer.eos_token_id and sample["labels"][-1] == IGNORE_INDEX


@pytest.mark.parametrize(("spec", "row", "field"), [
    (DatasetSpec(path="d"), {"instruction": "Add.", "output": 3}, "output"),
    (DatasetSpec(path="d"), {"output": "3"}, "instruction"),
    (DatasetSpec(path="d"), {"instruction": "Add.", "input": ["x"], "output": "3"}, "input"),
    (DatasetSpec(path="d", type="completion"), {"text": ["a", "b"]}, "text"),
    (DatasetSpec(path="d", type="sharegpt", chat_template="chatml"), {"conversations": "hi"}, "conversations"),
    (DatasetSpec(path="d", type="sharegpt", chat_template="chatml"), {"conversations": ["hi"]}, "conversations[0]"),
    (DatasetSpec(path="d", type="sharegpt", chat_template="chatml"),
     {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}, "conversations[1].from"),
    (DatasetSpec(path="d", type="chat_template", chat_template="chatml"),
     {"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    (DatasetSpec(path="d", type="chat_template", chat_template="llama2"),
     {"messages": [{"role": "tool", "content": "{}"}]}, "messages"),
    (DatasetSpec(path="d", type=UserFormat(format="{instruction}")), {"instruction": "Add.", "output": None}, "output"),
])
def test_a_missing_or_mistyped_field_is_bad_data_naming_it(tokenizer, spec, row, field):
    with pytest.raises(BadData) as raised:
        render(row, spec, tokenizer)
    assert raised.value.field == field and f"field `{field}`" in str(raised.value)


segments_strategy = st.lists(
    st.tuples(st.text(alphabet="ab xy_#:\n\té(){}", min_size=1, max_size=12), st.booleans()), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(segments=segments_strategy, train_on_inputs=st.booleans())
def test_labels_follow_the_segments_token_by_token(tokenizer, segments, train_on_inputs):
    text = "".join(part for part, _ in segments)
    encoded = tokenizer(text, return_offsets_mapping=True)
    sample = tokenize(segments, tokenizer, train_on_inputs)
    ids, labels = sample["input_ids"], sample["labels"]
    assert ids == [*encoded["input_ids"], tokenizer.eos_token_id] and len(labels) == len(ids)
    assert labels[0] == IGNORE_INDEX
    assert labels[-1] == (ids[-1] if train_on_inputs or segments[-1][1] else IGNORE_INDEX)
    # A token is trained exactly when one of its characters is (or everything is trained).
    flags = [trained for part, trained in segments for _ in part]
    for index, (start, end) in enumerate(encoded["offset_mapping"][1:], start=1):
        assert labels[index] == (ids[index] if train_on_inputs or any(flags[start:end]) else IGNORE_INDEX)
