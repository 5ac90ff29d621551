import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast

from app.engine.data import (
    ColumnSpec,
    DataFormatError,
    TokenizedDataset,
    batches_per_epoch,
    collate,
    make_loader,
    read_table,
)
from app.engine.errors import EngineError
from app.engine.task_types import OutputSpace, encode_labels, label_names_from


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def test_error_is_engine_and_value_error():
    assert issubclass(DataFormatError, EngineError) and issubclass(DataFormatError, ValueError)
    assert DataFormatError.code == "data_format_error"


def test_tsv_with_bom_keeps_trailing_whitespace(tmp_path):
    path = write(tmp_path, "t.tsv", "\ufeffsentence\tlabel\nit 's good . \t1\nbad\t 0 \n\n")
    data = read_table(path)
    assert data.texts == ["it 's good . ", "bad"]
    assert data.labels == ["1", "0"]
    assert data.text_pairs is None
    assert data.columns == ColumnSpec("sentence", None, "label")
    assert data.all_columns == ["sentence", "label"]


def test_tsv_bare_quotes_are_literal(tmp_path):
    content = (
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t1\t2\tHe said the pie "fits" .\t" The foodservice pie business .\n'
        '0\t3\t4\tA "quoted text" ?\tB"\n'
    )
    data = read_table(write(tmp_path, "mrpc.tsv", content))
    assert data.texts == ['He said the pie "fits" .', 'A "quoted text" ?']
    assert data.text_pairs == ['" The foodservice pie business .', 'B"']
    assert data.columns == ColumnSpec("#1 String", "#2 String", "Quality")


def test_csv_quoted_commas_and_crlf(tmp_path):
    content = 'text,label\r\n"hello, world",pos\r\n"say ""hi""",neg\r\nplain,pos\r\n'
    data = read_table(write(tmp_path, "d.csv", content))
    assert data.texts == ["hello, world", 'say "hi"', "plain"]
    assert data.labels == ["pos", "neg", "pos"]


def test_jsonl(tmp_path):
    rows = [
        {"premise": "a", "hypothesis": "b", "label": 1, "idx": 0},
        {"premise": "c", "hypothesis": "", "label": "entailment"},
    ]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = read_table(path)
    assert data.columns == ColumnSpec("premise", "hypothesis", "label")
    assert data.texts == ["a", "c"] and data.text_pairs == ["b", ""]
    assert data.labels == ["1", "entailment"]
    assert data.all_columns == ["premise", "hypothesis", "label", "idx"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "b"}', "line 2 has no key 'label'"),
        ('{"text": ["b"], "label": 1}', "line 2: .text. is a list"),
        ("[1, 2]", "line 2 is not a JSON object"),
        ("{nope", "line 2 is not a JSON object"),
    ],
)
def test_jsonl_bad_rows(tmp_path, line, message):
    path = write(tmp_path, "d.json", '{"text": "a", "label": 0}\n' + line + "\n")
    with pytest.raises(DataFormatError, match=message):
        read_table(path)


def test_explicit_columns(tmp_path):
    path = write(tmp_path, "d.tsv", "id\tbody\tother\tcls\n1\tx\ty\tA\n2\tz\tw\tB\n")
    data = read_table(path, ColumnSpec(text="body", text_pair="other", label="cls"))
    assert (data.texts, data.text_pairs, data.labels) == (["x", "z"], ["y", "w"], ["A", "B"])
    data = read_table(path, ColumnSpec(text="other", label="cls"))
    assert data.texts == ["y", "w"] and data.text_pairs is None


@pytest.mark.parametrize(
    "header, text, pair",
    [
        (["sentence", "label"], "sentence", None),
        (["text", "label"], "text", None),
        (["sentence1", "sentence2", "label"], "sentence1", "sentence2"),
        (["question", "sentence", "label"], "question", "sentence"),
        (["question1", "question2", "label"], "question1", "question2"),
        (["premise", "hypothesis", "label"], "premise", "hypothesis"),
    ],
)
def test_auto_detect(tmp_path, header, text, pair):
    path = write(
        tmp_path,
        "d.tsv",
        "\t".join(header) + "\n" + "\t".join(["a", "b", "0"][-len(header) :]) + "\n",
    )
    assert read_table(path).columns == ColumnSpec(text, pair, "label")


def test_missing_column_messages(tmp_path):
    path = write(tmp_path, "train.tsv", "sentence\tlbl\nhello\t1\n")
    with pytest.raises(DataFormatError) as err:
        read_table(path)
    assert "no label column found" in str(err.value)
    assert "['sentence', 'lbl']" in str(err.value) and "--label-column" in str(err.value)
    with pytest.raises(
        DataFormatError, match=r"no column 'label'; columns are \['sentence', 'lbl'\]"
    ):
        read_table(path, ColumnSpec(label="label"))
    with pytest.raises(DataFormatError, match="--text-column"):
        read_table(path, ColumnSpec(text="body", label="lbl"))


def test_labels_optional_for_prediction(tmp_path):
    path = write(tmp_path, "in.tsv", "sentence\nhello\n\n")
    data = read_table(path, require_labels=False)
    assert data.labels is None and data.columns.label is None and data.texts == ["hello"]


def test_empty_text_allowed_empty_label_rejected(tmp_path):
    assert read_table(write(tmp_path, "a.tsv", "sentence\tlabel\n\t1\nx\t0\n")).texts == ["", "x"]
    with pytest.raises(DataFormatError, match="line 3 has an empty .label."):
        read_table(write(tmp_path, "b.tsv", "sentence\tlabel\nx\t1\ny\t \n"))


@pytest.mark.parametrize(
    "content",
    [
        # CoLA's shape: source, label, original judgement (empty), sentence; no header
        "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
        "gj04\t1\t\tThe weights made the rope stretch over the pulley.\n",
        # SST-2 without its header line
        "it 's a charming and often affecting journey for everyone . \t1\nbleak\t0\n",
        "yes\tyes\nno\tno\n",  # duplicated "header" cells
    ],
)
@pytest.mark.parametrize("columns", [ColumnSpec(), ColumnSpec("sentence", None, "label")])
def test_headerless_rejected(tmp_path, content, columns):
    with pytest.raises(DataFormatError, match="seems to have no header row"):
        read_table(write(tmp_path, "cola.tsv", content), columns)


def test_headerless_file_with_named_columns(tmp_path):
    cola = write(
        tmp_path,
        "cola.tsv",
        "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
        "gj04\t0\t*\tThe more does Bill smoke.\n",
    )
    data = read_table(cola, names=["source", "label", "original", "sentence"])
    assert data.texts[1] == "The more does Bill smoke." and data.labels == ["1", "0"]
    assert data.columns == ColumnSpec("sentence", None, "label")
    with pytest.raises(DataFormatError, match="line 1 has 4 fields, the header has 3"):
        read_table(cola, names=["source", "label", "sentence"])
    with pytest.raises(DataFormatError, match="duplicated name"):
        read_table(cola, names=["a", "label", "a", "sentence"])
    jsonl = write(tmp_path, "d.jsonl", '{"sentence": "x", "label": "1"}\n')
    with pytest.raises(DataFormatError, match=".tsv/.csv files only"):
        read_table(jsonl, names=["sentence", "label"])


def test_wrong_field_count(tmp_path):
    path = write(tmp_path, "d.tsv", "sentence\tlabel\na\t1\nb\t0\textra\nc\t1\n")
    with pytest.raises(DataFormatError, match="line 3 has 3 fields, the header has 2"):
        read_table(path)


def test_invalid_utf8(tmp_path):
    path = write(tmp_path, "d.tsv", b"sentence\tlabel\nok\t1\ncaf\xe9\t0\n")
    with pytest.raises(DataFormatError, match="line 3 is not valid UTF-8"):
        read_table(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.tsv", "", "empty"),
        ("d.csv", "\n\n", "empty"),
        ("d.tsv", "sentence\tlabel\n", "no data rows"),
        ("d.jsonl", "\n", "no JSON objects"),
        ("d.txt", "sentence\tlabel\na\t1\n", r"unsupported file type '.txt'; use .tsv"),
        ("d", "x", "unsupported file type"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    with pytest.raises(DataFormatError, match=message):
        read_table(write(tmp_path, name, content))


def test_label_names_order():
    assert label_names_from(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_names_from(["-1", "0", "1"]) == ["-1", "0", "1"]
    assert label_names_from(["pos", "neg", "10", "neutral"]) == ["10", "neg", "neutral", "pos"]
    with pytest.raises(DataFormatError, match="need at least 2 classes, found only '1'"):
        label_names_from(["1", "1"])
    with pytest.raises(DataFormatError, match="found none"):
        label_names_from([])


def test_encode_labels():
    assert encode_labels(["b", "a", "b"], ["a", "b"]) == [1, 0, 1]
    with pytest.raises(DataFormatError) as err:
        encode_labels(["a", "x", "y", "x"], ["a", "b"])
    assert "['x', 'y']" in str(err.value) and "['a', 'b']" in str(err.value)
    with pytest.raises(DataFormatError, match=r"\['0', '1', '2', '3', '4'\] \.\.\."):
        encode_labels([str(i) for i in range(8)], ["a", "b"])


@pytest.fixture
def tokenizer(tmp_path) -> BertTokenizerFast:
    vocab = tmp_path / "vocab.txt"
    words = ["good", "bad", "movie", "the", "very", "not"]
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # positional: the vocab file is `vocab_file` in transformers 4 but `vocab` in 5, which
    # silently ignores vocab_file= (every word would become [UNK])
    tokenizer = BertTokenizerFast(str(vocab), do_lower_case=True)
    assert tokenizer.vocab_size == 5 + len(words)
    return tokenizer


def test_tokenized_dataset_and_collate(tokenizer, tmp_path):
    path = write(tmp_path, "d.tsv", "sentence\tlabel\ngood\tpos\nthe movie very bad\tneg\n")
    data = read_table(path)
    ds = TokenizedDataset(data, tokenizer, max_length=5, space=OutputSpace(labels=("neg", "pos")))
    assert len(ds) == 2
    first, second = ds[0], ds[1]
    assert first["input_ids"] == [2, 5, 3] and first["labels"] == 1
    assert len(second["input_ids"]) == 5 and second["input_ids"][-1] == 3  # truncated
    batch = collate([first, second], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[2, 5, 3, 0, 0], second["input_ids"]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["token_type_ids"].tolist() == [[0] * 5] * 2
    assert batch["labels"].tolist() == [1, 0]
    assert all(t.dtype == torch.long for t in batch.values())
    assert collate([first], pad_token_id=99)["input_ids"].tolist() == [[2, 5, 3]]
    no_labels = TokenizedDataset(data, tokenizer, 5, None)
    assert "labels" not in no_labels[0]


def test_tokenized_pairs_and_padding_value(tokenizer, tmp_path):
    path = write(tmp_path, "d.tsv", "sentence1\tsentence2\tlabel\ngood\tnot bad\t1\nbad\tgood\t0\n")
    ds = TokenizedDataset(read_table(path), tokenizer, 32, OutputSpace(labels=("0", "1")))
    assert ds[0]["token_type_ids"] == [0, 0, 0, 1, 1, 1]
    batch = collate([ds[1], ds[0]], pad_token_id=7)
    assert batch["input_ids"][0].tolist()[-1] == 7 and batch["token_type_ids"][0, -1] == 0


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n, self.fetched = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.fetched.append(i)
        return {
            "input_ids": [i + 1] * (i % 3 + 1),
            "attention_mask": [1] * (i % 3 + 1),
            "labels": i,
        }


def test_make_loader_deterministic_and_resumable():
    ds = CountingDataset(23)
    assert batches_per_epoch(23, 5) == 5 and batches_per_epoch(20, 5) == 4
    full = list(make_loader(ds, 5, True, seed=3, pad_token_id=0, epoch=1))
    assert len(full) == 5 and [len(b["labels"]) for b in full] == [5, 5, 5, 5, 3]
    order = torch.randperm(23, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1))
    assert torch.cat([b["labels"] for b in full]).tolist() == order.tolist()
    again = list(make_loader(ds, 5, True, seed=3, pad_token_id=0, epoch=1))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(full, again, strict=True) for k in a)
    other_epoch = list(make_loader(ds, 5, True, seed=3, pad_token_id=0, epoch=2))
    assert torch.cat([b["labels"] for b in other_epoch]).tolist() != order.tolist()
    for k in range(6):
        ds.fetched.clear()
        resumed = list(make_loader(ds, 5, True, seed=3, pad_token_id=0, epoch=1, skip_batches=k))
        assert len(resumed) == len(full) - k
        assert all(
            torch.equal(a[key], b[key]) for a, b in zip(full[k:], resumed, strict=True) for key in a
        )
        assert sorted(ds.fetched) == sorted(order[5 * k :].tolist())  # skipped rows not built
    plain = list(make_loader(ds, 10, False, seed=0, pad_token_id=0))
    assert torch.cat([b["labels"] for b in plain]).tolist() == list(range(23))


def _glue(glue_dir: Path, task: str) -> Path:
    path = glue_dir / task / "dev.tsv"  # glue_dir (conftest): $GLUE_DIR or ../shared/data/glue
    if not path.is_file():
        pytest.skip(f"{path} not found (set GLUE_DIR to the folder holding MRPC/ and SST-2/)")
    return path


@pytest.mark.data
def test_real_glue_dev_files(glue_dir):
    mrpc = read_table(_glue(glue_dir, "MRPC"))
    assert len(mrpc.texts) == len(mrpc.text_pairs) == 408
    assert mrpc.columns == ColumnSpec("#1 String", "#2 String", "Quality")
    assert Counter(mrpc.labels) == {"1": 279, "0": 129}
    assert any(t.startswith('" ') for t in mrpc.text_pairs)  # bare quotes survive
    sst2 = read_table(_glue(glue_dir, "SST-2"))
    assert len(sst2.texts) == 872 and sst2.columns == ColumnSpec("sentence", None, "label")
    assert Counter(sst2.labels) == {"1": 444, "0": 428}
