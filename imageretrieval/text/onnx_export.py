"""The sentence encoder exported to ONNX, and run with ONNX Runtime + the `tokenizers` library alone.

A serving install has no PyTorch (requirements-serve.txt): `train --recipe text` (and `export_text_encoder`)
writes `<WORKDIR>/exports/text/<encoder>/model.onnx` beside the encoder's `tokenizer.json`, and the
API loads that pair. The export is the transformer alone (token embeddings); mean pooling over the
attention mask and L2 normalization, what sentence-transformers does after it, run in numpy.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from ..io_utils import atomic_write, load_json, save_json

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length; an export records its encoder's own
EXPORT_OPSET = 17


def export_dir(workdir: Path, encoder_name: str) -> Path:
    return Path(workdir) / "exports" / "text" / encoder_name.replace("/", "__")


def export_text_encoder(encoder, workdir: Path) -> Path:
    """Export a SentenceTransformerEncoder's transformer (PyTorch needed here, not where it runs)."""
    import torch

    out = export_dir(workdir, encoder.name)
    model_path = out / "model.onnx"
    transformer = encoder.model[0].auto_model.eval().float().cpu()
    tokenizer = encoder.model[0].tokenizer

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    example = tokenizer(["a red dress", "men's navy striped polo shirt"], padding=True, return_tensors="pt")
    args = (example["input_ids"], example["attention_mask"], example["token_type_ids"])
    dynamic = {name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids")}

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(TokenEmbeddings(transformer), args, str(tmp),
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["token_embeddings"],
                              dynamic_axes={**dynamic, "token_embeddings": {0: "batch", 1: "tokens"}},
                              opset_version=EXPORT_OPSET, dynamo=False)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(model_path, write)
    tokenizer.save_pretrained(str(out / "tokenizer"))  # tokenizer.json among its files
    shutil.copyfile(out / "tokenizer" / "tokenizer.json", out / "tokenizer.json")
    save_json(out / "encoder.json", {"name": encoder.name, "max_tokens": int(encoder.model.max_seq_length)})
    log.info("text encoder %s exported to %s", encoder.name, model_path)
    return model_path


class OnnxTextEncoder:
    """tokenizer.json + model.onnx -> mean-pooled, L2-normalized sentence embeddings (no PyTorch)."""

    runtime = "onnxruntime"

    def __init__(self, name: str, folder: Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.name = name
        self.tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        info = Path(folder) / "encoder.json"
        max_tokens = load_json(info).get("max_tokens", DEFAULT_MAX_TOKENS) if info.is_file() else DEFAULT_MAX_TOKENS
        self.tokenizer.enable_truncation(int(max_tokens))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(Path(folder) / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.dims = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dims), np.float32)
        batch = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in batch], np.int64)
        mask = np.array([e.attention_mask for e in batch], np.int64)
        tokens = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                         "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def exported(workdir: Path | None, encoder_name: str) -> Path | None:
    """The folder of the encoder's ONNX export in the workdir, when there is one."""
    if workdir is None:
        return None
    folder = export_dir(workdir, encoder_name)
    return folder if (folder / "model.onnx").is_file() and (folder / "tokenizer.json").is_file() else None
