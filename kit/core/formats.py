"""Prompt formats: a dataset row -> text segments, trained or not; segments -> token ids and labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kit.core.params import DatasetSpec, UserFormat
from kit.core.sources import BadData, kind_of

IGNORE_INDEX = -100
# An instructed answer starts inside a Python fence, so the model writes code straight away.
ANSWER_FENCE = "```python\n"
# (text, trained): a rendered row is the concatenation of its segments' texts.
Segment = tuple[str, bool]

# Axolotl's alpaca prompts, word for word, so adapters trained here prompt the same way.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

CONVERSATION_TYPES = ("sharegpt", "chat_template")
# Conversations: Axolotl's default field and message keys for each type, and its role names.
CONVERSATION_DEFAULTS = {
    "sharegpt": ("conversations", {"role": "from", "content": "value"}),
    "chat_template": ("messages", {"role": "role", "content": "content"}),
}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "tool": "tool"}
# Named templates for tokenizers without one (`chat_template:` in a dataset entry).
CHAT_TEMPLATES = {
    "chatml": (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
    # Llama 2 chat: the system prompt goes inside the first [INST] block.
    "llama2": (
        "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' -%}"
        "{%- for message in messages if message['role'] != 'system' -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{ bos_token + '[INST] ' }}"
        "{%- if loop.first and system -%}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{%- endif -%}"
        "{{ message['content'] + ' [/INST]' }}"
        "{%- elif message['role'] == 'assistant' -%}{{ ' ' + message['content'] + ' ' + eos_token }}"
        "{%- else -%}{{ raise_exception('llama2 has no role ' + message['role']) }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    ),
}
# Stands in for one message's content, to find where the template puts that content.
CONTENT_MARKER = "\x00tunebook-content\x00"


def _text(values: Mapping[str, Any], key: str, name: str | None = None, required: bool = True) -> str:
    """``values[key]`` as text; a missing or null optional value is empty text."""
    value = values.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise BadData("missing", field=name or key)
    if not isinstance(value, str):
        raise BadData(f"expected a string, got {kind_of(value)}", field=name or key)
    return value


def _fill(template: str, **values: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"datasets: type.format {template!r}: only {{instruction}}, {{input}} and {{system}} can be filled "
            f"(write a literal brace twice: {{{{ }}}}); {error!r}"
        ) from None


def _alpaca(row: Mapping[str, Any]) -> list[Segment]:
    instruction, given = _text(row, "instruction"), _text(row, "input", required=False)
    template = ALPACA_WITH_INPUT if given else ALPACA_NO_INPUT
    return [(template.format(instruction=instruction, input=given), False), (_text(row, "output"), True)]


def _user_format(row: Mapping[str, Any], user: UserFormat) -> list[Segment]:
    # As Axolotl's user-defined format: a row's own system text wins over `system_prompt`, and
    # `no_input_format` (where given) is used for rows without input.
    instruction = _text(row, user.field_instruction)
    given = _text(row, user.field_input, required=False) if user.field_input else ""
    system = (_text(row, user.field_system, required=False) if user.field_system else "") or user.system_prompt
    template = user.no_input_format if not given and user.no_input_format is not None else user.format
    prompt = _fill(template, instruction=instruction, input=given, system=system)
    return [(prompt, False), (_text(row, user.field_output), True)]


def resolve_chat_template(spec: DatasetSpec, tokenizer) -> str:
    """The Jinja template conversations are rendered with.

    As in Axolotl, a named ``chat_template`` wins; without one (or with ``tokenizer_default``) the
    tokenizer's own template is used.
    """
    if spec.chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[spec.chat_template]
    if not tokenizer.chat_template:
        raise ValueError(
            f"datasets: {spec.path}: the tokenizer has no chat template; name one with "
            f"chat_template: ({', '.join(CHAT_TEMPLATES)})"
        )
    return tokenizer.chat_template


def _messages(row: Mapping[str, Any], spec: DatasetSpec) -> tuple[str, list[dict[str, str]]]:
    """(the conversation's field, its messages as {role, content} with Axolotl's role names)."""
    default_field, default_keys = CONVERSATION_DEFAULTS[spec.type]
    field = spec.field_messages or default_field
    keys = {**default_keys, **(spec.message_property_mappings or {})}
    conversation = row.get(field)
    if conversation is None:
        raise BadData("missing", field=field)
    if not isinstance(conversation, list):
        raise BadData(f"expected a list of messages, got {kind_of(conversation)}", field=field)
    messages = []
    for index, message in enumerate(conversation):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise BadData(f"expected an object, got {kind_of(message)}", field=where)
        role = message.get(keys["role"])
        if role not in ROLES:
            raise BadData(f"unknown role {role!r} ({', '.join(ROLES)})", field=f"{where}.{keys['role']}")
        content = _text(message, keys["content"], name=f"{where}.{keys['content']}")
        messages.append({"role": ROLES[role], "content": content})
    return field, messages


def _conversation(row: Mapping[str, Any], spec: DatasetSpec, tokenizer) -> list[Segment]:
    """The whole conversation rendered once; each turn of a role in ``roles_to_train`` is trained
    from its content to the end of its turn (the template's end-of-turn marker included)."""
    from jinja2 import TemplateError

    field, messages = _messages(row, spec)
    if not messages:  # nothing to train: counted as empty, where transformers would refuse to render it
        return []
    template = resolve_chat_template(spec, tokenizer)

    def rendered(conversation: list[dict[str, str]]) -> str:
        try:
            return tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)
        except TemplateError as error:
            raise BadData(f"the chat template refused it: {error}", field=field) from None

    full = rendered(messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] not in spec.roles_to_train:
            continue
        # The turn ends where the conversation up to it ends; its content starts where a marker put
        # in its place appears. Both hold only for templates that render turn by turn.
        turn = rendered(messages[: index + 1])
        before, found, after = rendered([*messages[:index], {**message, "content": CONTENT_MARKER}]).partition(
            CONTENT_MARKER
        )
        if not (found and full.startswith(turn) and turn.startswith(before) and turn.endswith(after)):
            raise ValueError(
                f"datasets: {spec.path}: the chat template does not render conversations turn by turn "
                f"(turn {index} changes when later turns follow), so its trained tokens cannot be found"
            )
        spans.append((len(before), len(turn)))

    # The tokenizer adds its BOS itself; a template that writes one too would double it.
    bos = tokenizer.bos_token
    start = len(bos) if bos and full.startswith(bos) and tokenizer_adds_bos(tokenizer) else 0
    segments, cursor = [], start
    for span_start, span_end in spans:
        segments += [(full[cursor:span_start], False), (full[max(span_start, cursor) : span_end], True)]
        cursor = span_end
    segments.append((full[cursor:], False))
    return [(text, trained) for text, trained in segments if text]


def tokenizer_adds_bos(tokenizer) -> bool:
    return tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]


def render(row: Mapping[str, Any], spec: DatasetSpec, tokenizer=None) -> list[Segment]:
    """One row as text segments, ``(text, trained)``; the conversation formats need the tokenizer.

    Raises BadData naming the field when the row lacks a field its format needs or has one of the
    wrong type.
    """
    if isinstance(spec.type, UserFormat):
        return _user_format(row, spec.type)
    if spec.type == "alpaca":
        return _alpaca(row)
    if spec.type == "completion":
        return [(_text(row, spec.field or "text"), True)]
    return _conversation(row, spec, tokenizer)


def tokenize(segments: list[Segment], tokenizer, train_on_inputs: bool = False) -> dict[str, list[int]]:
    """Token ids of the segments' text with the tokenizer's BOS and an EOS, and their labels.

    The whole text is tokenized once and each token's segment found by character offsets: tokenizing
    the parts apart would change the tokens at the seams (SentencePiece prefixes each part with a
    space). A token is trained when any of its characters is, as the ``▁answer`` that carries the
    prompt's last space must be; ``train_on_inputs`` trains every token.
    """
    text = "".join(part for part, _ in segments)
    trained_chars = bytearray(len(text))
    cursor = 0
    for part, trained in segments:
        if trained:
            trained_chars[cursor : cursor + len(part)] = b"\x01" * len(part)
        cursor += len(part)
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    input_ids = list(encoded["input_ids"])
    trained = [train_on_inputs or any(trained_chars[start:end]) for start, end in encoded["offset_mapping"]]
    if input_ids[-1] != tokenizer.eos_token_id:
        input_ids.append(tokenizer.eos_token_id)
        trained.append(False)
    # The EOS teaches where to stop: trained after a trained reply, not after an untrained turn.
    trained[-1] = train_on_inputs or bool(text and trained_chars[-1])
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, trained)]
    # The first token is never predicted within its sample; in a packed row it would be "predicted"
    # from the previous sample's last token, so it is masked either way.
    labels[0] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels}


def prompt_text(spec: DatasetSpec, tokenizer, prompt: str) -> str:
    """``prompt`` as a training sample of ``spec`` would show it, up to where the response starts.

    Instruction formats render a row with an empty response through the training code itself and
    keep its untrained part (for alpaca, Axolotl's no-input prompt); conversations end with the
    template's assistant header; a completion dataset had no prompt, so the text goes as it is.
    """
    if spec.type == "completion":
        return prompt
    if spec.type in CONVERSATION_TYPES:
        template = resolve_chat_template(spec, tokenizer)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], chat_template=template, add_generation_prompt=True, tokenize=False
        )
        # As in training: the tokenizer adds its BOS itself, so a template's own would double it.
        bos = tokenizer.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) and tokenizer_adds_bos(tokenizer) else text
    if isinstance(spec.type, UserFormat):
        row = {spec.type.field_instruction: prompt, spec.type.field_output: ""}
    else:
        row = {"instruction": prompt, "output": ""}
    return "".join(text for text, trained in render(row, spec, tokenizer) if not trained)


def answer_end(spec: DatasetSpec, tokenizer) -> str:
    """The text a training sample of ``spec`` puts right after its answer: a conversation template's end
    of turn (``<|im_end|>`` for chatml); nothing for the other formats, whose answers end with the EOS."""
    if spec.type not in CONVERSATION_TYPES:
        return ""
    conversation = [{"role": "user", "content": "?"}, {"role": "assistant", "content": CONTENT_MARKER}]
    text = tokenizer.apply_chat_template(conversation, chat_template=resolve_chat_template(spec, tokenizer),
                                         tokenize=False)
    return text.partition(CONTENT_MARKER)[2].strip()
