"""Tiny random-init models of every family kilotask is tested on, saved as local HF folders.

One builder per family (PEFT's TEST_CASES style): a config with tiny sizes (hidden 32, 2 layers,
the 25-word vocabulary of tests/factories.py), the family's bare base model (no head, so the
engine seeds the classifier as it does for real checkpoints) and a word-level BertTokenizerFast.
AutoTokenizer loads that tokenizer from any family's folder (tokenizer_config.json names its
class), so no sentencepiece or BPE files are needed and nothing touches the network.
Encoder-decoder families (BART, T5) classify at the end-of-sequence token, so their configs name
[SEP] as EOS: the tokenizer appends exactly one to every row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import transformers as T

from tests.factories import SPECIAL, WORDS

VOCAB = {token: i for i, token in enumerate(SPECIAL + WORDS)}
PAD, CLS, SEP = VOCAB["[PAD]"], VOCAB["[CLS]"], VOCAB["[SEP]"]
HIDDEN, LAYERS = 32, 2
# BERT-style fields most encoder configs take; ids chosen to match the word-level tokenizer.
ENCODER = dict(vocab_size=len(VOCAB), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
               num_attention_heads=2, intermediate_size=2 * HIDDEN, max_position_embeddings=64,
               pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP)  # fmt: skip


def _bart() -> T.PretrainedConfig:
    return T.BartConfig(
        vocab_size=len(VOCAB), d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * HIDDEN,
        decoder_ffn_dim=2 * HIDDEN, max_position_embeddings=64, pad_token_id=PAD,
        bos_token_id=CLS, eos_token_id=SEP, decoder_start_token_id=SEP, forced_eos_token_id=SEP,
    )  # fmt: skip


def _t5() -> T.PretrainedConfig:
    return T.T5Config(
        vocab_size=len(VOCAB), d_model=HIDDEN, d_kv=HIDDEN // 2, d_ff=2 * HIDDEN,
        num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=PAD, eos_token_id=SEP,
        decoder_start_token_id=PAD,
    )  # fmt: skip


# family -> (tiny config, whether its inputs take token_type_ids)
CONFIGS: dict[str, tuple[Callable[[], T.PretrainedConfig], bool]] = {
    "bert": (lambda: T.BertConfig(**ENCODER), True),
    "roberta": (lambda: T.RobertaConfig(**ENCODER, type_vocab_size=1), False),
    "electra": (lambda: T.ElectraConfig(**ENCODER, embedding_size=16), True),
    # two layers that share ONE layer's weights (num_hidden_groups = inner_group_num = 1)
    "albert": (lambda: T.AlbertConfig(**ENCODER, embedding_size=16), True),
    "xlm-roberta": (lambda: T.XLMRobertaConfig(**ENCODER, type_vocab_size=1), False),
    "deberta-v2": (
        lambda: T.DebertaV2Config(
            **ENCODER,
            relative_attention=True,
            position_buckets=8,
            norm_rel_ebd="layer_norm",
            type_vocab_size=0,
        ),
        False,
    ),  # fmt: skip
    "distilbert": (
        lambda: T.DistilBertConfig(
            vocab_size=len(VOCAB),
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=2,
            hidden_dim=2 * HIDDEN,
            max_position_embeddings=64,
            pad_token_id=PAD,
        ),
        False,
    ),  # fmt: skip
    "mpnet": (lambda: T.MPNetConfig(**ENCODER), False),
    "bart": (_bart, False),
    "t5": (_t5, False),
}
FAMILIES = tuple(CONFIGS)
ENCODER_DECODER = frozenset({"bart", "t5"})


def make_family(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny `family` base model (weights from torch's RNG under `seed`) and its
    tokenizer to `folder`; the engine loads the folder path as a model id."""
    config_fn, token_types = CONFIGS[family]
    folder.mkdir(parents=True, exist_ok=True)
    inputs = ["input_ids", "token_type_ids", "attention_mask"]
    tokenizer = T.BertTokenizerFast(
        vocab=VOCAB,
        do_lower_case=True,
        model_input_names=inputs if token_types else [inputs[0], inputs[2]],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        T.AutoModel.from_config(config_fn()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
