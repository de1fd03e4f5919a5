"""A tiny random-weight sentence encoder the embedding tests build (no torch): a BERT-shaped
ONNX graph made with `onnx.helper`, a WordLevel tokenizer.json made with `tokenizers`, and
the sentence-transformers files that say its pooling and normalisation. `reference`
computes in numpy what the server must return for it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

WORDS = [
    *("hello", "world", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"),
    *("sensor", "valve", "pump"),
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


@dataclass(frozen=True)
class Encoder:
    path: Path
    embeddings: np.ndarray  # [vocab, hidden]
    types: np.ndarray  # [2, hidden]
    weight: np.ndarray  # [hidden, hidden]
    bias: np.ndarray  # [hidden]
    pooling: str
    normalize: bool

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dimensions(self) -> int:
        return int(self.weight.shape[1])

    def ids(self, text: str) -> list[int]:
        vocabulary = {w: i for i, w in enumerate(SPECIAL + WORDS)}
        return [2, *(vocabulary.get(w, 1) for w in text.lower().split()), 3]

    def reference(self, text: str) -> np.ndarray:
        """The sentence vector of `text` alone (no padding), as the server must compute it."""
        ids = np.array(self.ids(text))
        hidden = np.tanh((self.embeddings[ids] + self.types[0]) @ self.weight + self.bias)
        vector = hidden[0] if self.pooling == "cls" else hidden.mean(axis=0)
        return vector / np.linalg.norm(vector) if self.normalize else vector


def build_encoder(
    path: Path, *, hidden: int = 32, pooling: str = "mean", normalize: bool = True, seed: int = 7
) -> Encoder:
    rng = np.random.default_rng(seed)
    vocab = len(SPECIAL) + len(WORDS)
    encoder = Encoder(
        path,
        rng.normal(size=(vocab, hidden)).astype(np.float32),
        rng.normal(scale=0.1, size=(2, hidden)).astype(np.float32),
        rng.normal(scale=hidden**-0.5, size=(hidden, hidden)).astype(np.float32),
        rng.normal(scale=0.1, size=hidden).astype(np.float32),
        pooling,
        normalize,
    )
    path.mkdir(parents=True)
    (path / "onnx").mkdir()
    onnx.save(_graph(encoder), path / "onnx" / "model.onnx")
    _tokenizer().save(str(path / "tokenizer.json"))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
            }
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"}
        )  # fmt: skip
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    return encoder


def _graph(encoder: Encoder) -> onnx.ModelProto:
    """Gather the word and token-type embeddings, add them, one dense layer with tanh."""
    dims = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, dims)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, [*dims, encoder.dimensions]
    )
    weights = [
        numpy_helper.from_array(encoder.embeddings, "embeddings"),
        numpy_helper.from_array(encoder.types, "types"),
        numpy_helper.from_array(encoder.weight, "weight"),
        numpy_helper.from_array(encoder.bias, "bias"),
    ]
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["words"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["typed"]),
        helper.make_node("Add", ["words", "typed"], ["summed"]),
        helper.make_node("MatMul", ["summed", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["biased"]),
        helper.make_node("Tanh", ["biased"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(nodes, "encoder", inputs, [output], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _tokenizer() -> Tokenizer:
    vocabulary = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer
