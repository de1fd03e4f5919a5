"""Sentence embeddings from an encoder served with plain onnxruntime (onnxruntime-genai runs
decoders only). The model is a sentence-transformers folder: `model.onnx` (or
`onnx/model.onnx`), `tokenizer.json`, and the files that say how token vectors become one
sentence vector: `1_Pooling/config.json` (mean or CLS), `modules.json` (a Normalize module:
unit length) and `sentence_bert_config.json` (`max_seq_length`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog
from tokenizers import Encoding, Tokenizer

from agent.engine.types import EngineError, ErrorCode
from agent.settings import EngineSettings

log = structlog.get_logger(__name__)

BATCH = 32  # texts per onnxruntime run: bounds the activations a long input list takes
DEFAULT_MAX_LENGTH = 512
MODEL_FILES = ("model.onnx", "onnx/model.onnx")
POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens"}


def model_file(path: Path) -> Path:
    for name in MODEL_FILES:
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{path} holds no {' or '.join(MODEL_FILES)}")


def weights_bytes(path: Path) -> int:
    """What the encoder takes resident, about: its graph and weights (external data too)."""
    onnx_file = model_file(path)
    external = [onnx_file.with_name(onnx_file.name + s) for s in ("_data", ".data")]
    return sum(p.stat().st_size for p in (onnx_file, *external) if p.is_file())


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _pooling(path: Path) -> str:
    config = _read_json(path / "1_Pooling" / "config.json") or {"pooling_mode_mean_tokens": True}
    modes = [mode for mode, key in POOLING_KEYS.items() if config.get(key)]
    if len(modes) != 1:
        raise ValueError(f"{path}: the pooling config must choose one of mean or CLS: {config}")
    return modes[0]


def _normalizes(path: Path) -> bool:
    modules = _read_json(path / "modules.json") or []
    return any(str(m.get("type", "")).endswith(".Normalize") for m in modules)


class Embedder:
    """One encoder session; `embed` may be called from several threads at once."""

    def __init__(self, path: Path, session: ort.InferenceSession, tokenizer: Tokenizer) -> None:
        self.path = path
        self.name = path.name
        self.session = session
        self.tokenizer = tokenizer
        self.pooling = _pooling(path)
        self.normalize = _normalizes(path)
        config = _read_json(path / "sentence_bert_config.json") or {}
        self.max_length = int(config.get("max_seq_length", DEFAULT_MAX_LENGTH))
        self.inputs = {i.name for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        preferred = [n for n in ("sentence_embedding", "last_hidden_state") if n in outputs]
        self.output = (preferred or outputs)[0]
        self.truncating = Tokenizer.from_str(tokenizer.to_str())  # keeps the closing token
        self.truncating.enable_truncation(self.max_length)
        vocabulary = tokenizer.get_vocab()
        self.pad_id = next((vocabulary[t] for t in ("[PAD]", "<pad>") if t in vocabulary), 0)
        self.dimensions = len(self.embed(["dimensions"], truncate=True)[0][0])

    @classmethod
    def load(cls, path: Path, threads: int | None) -> Embedder:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(model_file(path)), options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()  # padded here, with the attention mask pooling reads
        return cls(path, session, tokenizer)

    def embed(self, texts: Sequence[str], truncate: bool) -> tuple[list[list[float]], int]:
        """One vector per text, and the tokens read (special tokens included). A text past
        `max_length` tokens is cut there with `truncate`, else refused."""
        encodings = self.tokenizer.encode_batch(list(texts))
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > self.max_length:
                if not truncate:
                    raise EngineError(
                        ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                        f"input {index} has {len(encoding.ids)} tokens; {self.name} reads at "
                        f"most {self.max_length}",
                        param="input",
                    )
                encodings[index] = self.truncating.encode(texts[index])
        vectors: list[list[float]] = []
        for start in range(0, len(encodings), BATCH):
            vectors.extend(self._run(encodings[start : start + BATCH]).tolist())
        return vectors, sum(len(e.ids) for e in encodings)

    def _run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = encoding.ids, 1, encoding.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self.session.run(
            [self.output], {k: v for k, v in feeds.items() if k in self.inputs}
        )
        states = np.asarray(hidden[0], dtype=np.float32)
        if states.ndim == 2:  # the graph pools itself
            pooled = states
        elif self.pooling == "cls":
            pooled = states[:, 0]
        else:  # the mean over each text's own tokens: padding must not move it
            weights = mask[..., None].astype(np.float32)
            pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled


@dataclass(frozen=True)
class Embeddings:
    """Sentence vectors, one per input text, and the tokens the encoder read for them."""

    model: str
    vectors: list[list[float]]
    prompt_tokens: int


class EmbeddingModel:
    """The daemon's embedding model, if one is configured: named in requests, loaded at
    start next to the chat model, and counted in its memory budget until it is resident."""

    def __init__(self, path: Path | None, settings: EngineSettings) -> None:
        self.path = path
        self.threads = settings.intra_op_num_threads  # None: onnxruntime's default
        self.embedder: Embedder | None = None
        self.size_bytes = weights_bytes(path) if path is not None else 0

    @property
    def pending_bytes(self) -> int:
        """Memory the encoder will take that the system does not show as used yet."""
        return self.size_bytes if self.embedder is None else 0

    async def start(self) -> None:
        if self.path is not None and self.embedder is None:
            self.embedder = await asyncio.to_thread(Embedder.load, self.path, self.threads)
            log.info("embedding model loaded", model=self.embedder.name,
                     dimensions=self.embedder.dimensions)  # fmt: skip

    def resolve(self, model: str | None) -> Embedder:
        embedder = self.embedder
        if self.path is None or embedder is None:
            if self.path is None:
                raise EngineError(
                    ErrorCode.INVALID_REQUEST,
                    "no embedding model is configured on this gateway (set embedding_model)",
                    param="model",
                )
            raise EngineError(ErrorCode.MODEL_NOT_READY, "the embedding model is loading")
        if model and model not in (embedder.name, f"{embedder.name}:latest"):
            raise EngineError(
                ErrorCode.MODEL_NOT_FOUND,
                f"model {model!r} does not embed here; the embedding model is {embedder.name!r}",
                param="model",
            )
        return embedder

    async def embed(self, texts: Sequence[str], model: str | None, truncate: bool) -> Embeddings:
        if not texts:
            raise EngineError(ErrorCode.INVALID_REQUEST, "input is empty", param="input")
        embedder = self.resolve(model)
        vectors, tokens = await asyncio.to_thread(embedder.embed, texts, truncate)
        return Embeddings(embedder.name, vectors, tokens)

    def describe(self) -> dict[str, Any] | None:
        embedder = self.embedder
        if embedder is None:
            return None
        return {
            "name": embedder.name,
            "path": str(embedder.path),
            "dimensions": embedder.dimensions,
            "pooling": embedder.pooling,
            "normalize": embedder.normalize,
            "max_length": embedder.max_length,
            "size_bytes": self.size_bytes,
        }
